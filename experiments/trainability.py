"""Trainability (SPP §4.3, Table 1): SNIP under VS-H init vs orthogonal init vs orthogonal init + the
approximate-isometry repair, then training.

Networks: MLP-7 tanh (width 100) and LeNet-300-100. Sparsity 90% (``--quick``) or 90/95/98% (full).
Protocol: SNIP on one batch of 100 true-labelled images, global threshold, prune, (repair: plain SGD,
lr 0.1, target I, 10,000 steps as the authors; ``--quick`` uses the package's conjugate-gradient solver,
100 steps), then plain SGD as in SPP's MNIST code: lr 0.1, no momentum (``--momentum``), batch 100,
weight decay 5e-4, for 500 (``--quick``) or 10,000 steps. A dense network (orthogonal init) is the
reference.

    .venv/bin/python -m experiments.trainability [--quick] [--seeds 3] [--out docs/results]

Writes ``trainability.csv`` (final numbers per run), ``trainability_curves.csv`` (test error and training
loss every ``eval_every`` steps), ``trainability.md`` and ``trainability_curves.png``.
"""

from __future__ import annotations

import os

import numpy as np

from experiments import common as C

METHODS = {  # name -> (init, repair?)
    "VS-H": ("VS-H", False),
    "orthogonal": ("orthogonal", False),
    "orthogonal + repair": ("orthogonal", True),
}
NETS = {"MLP-7 tanh": ("mlp", 7, "tanh"), "LeNet-300-100": ("lenet300", None, None)}


def run(args) -> dict:
    C.setup_torch()
    timer = C.Timer()
    data = C.load_data(args.data, args.root)
    sparsities = [0.9] if args.quick else [0.9, 0.95, 0.98]
    steps = 500 if args.quick else 10000
    repair_steps, solver = (100, "cg") if args.quick else (10000, "sgd")
    eval_every = 25 if args.quick else 500
    rows, curves = [], []
    results = {}
    for net, (arch, depth, act) in NETS.items():
        for sp in [0.0] + sparsities:
            for method, (init, rep) in METHODS.items():
                if sp == 0.0 and method != "orthogonal":
                    continue
                name = "dense" if sp == 0.0 else method
                for seed in range(args.seeds):
                    model = C.make_model(arch, init, seed, depth=depth or 7, activation=act or "tanh")
                    masks = None
                    if sp > 0:
                        masks = C.snip_masks(model, data, sp, seed)
                        if rep:
                            C.apply_masks(model, masks)
                            C.repair(model, repair_steps, solver)
                    r = C.train(model, data, steps=steps, seed=seed, masks=masks, eval_every=eval_every,
                                momentum=args.momentum)
                    results.setdefault((net, sp, name), []).append(r)
                    rows.append(dict(net=net, sparsity=sp, method=name, seed=seed, test_error=r.final_error,
                                     train_loss=r.final_train_loss))
                    for st, e, l in zip(r.eval_steps, r.errors, r.losses):
                        curves.append(dict(net=net, sparsity=sp, method=name, seed=seed, step=st, test_error=e, train_loss=l))
        print(f"trainability: {net} done in {timer}")
    out = args.out
    C.write_csv(os.path.join(out, "trainability.csv"), rows)
    C.write_csv(os.path.join(out, "trainability_curves.csv"), curves)

    table = []
    for net in NETS:
        for sp in [0.0] + sparsities:
            for name in (["dense"] if sp == 0.0 else list(METHODS)):
                rs = results[(net, sp, name)]
                table.append([net, f"{int(sp * 100)}%", name, C.fmt([r.final_error for r in rs]),
                              C.fmt([r.final_train_loss for r in rs], 4)])

    fig, axes = C.plt.subplots(2, len(NETS) * len(sparsities), figsize=(5 * len(NETS) * len(sparsities), 7), squeeze=False)
    col = 0
    for net in NETS:
        for sp in sparsities:
            for name in list(METHODS) + ["dense"]:
                rs = results[(net, 0.0 if name == "dense" else sp, name)]
                xs = rs[0].eval_steps
                for row, key in enumerate(["losses", "errors"]):
                    a = np.array([getattr(r, key) for r in rs], dtype=float)
                    m, s = a.mean(0), a.std(0, ddof=1) if len(rs) > 1 else 0 * a.mean(0)
                    ax = axes[row][col]
                    ax.plot(xs, m, label=name, ls="--" if name == "dense" else "-")
                    ax.fill_between(xs, m - s, m + s, alpha=0.2)
            axes[0][col].set_title(f"{net}, {int(sp * 100)}% sparsity")
            axes[0][col].set_ylabel("training loss")
            axes[0][col].set_yscale("log")
            axes[1][col].set_ylabel("test error (%)")
            axes[1][col].set_xlabel("step")
            axes[0][col].legend(fontsize=7)
            col += 1
    C.savefig(fig, os.path.join(out, "trainability_curves.png"))

    cmd = C.command_line("trainability", args)
    C.write_md(os.path.join(out, "trainability.md"), "Trainability: VS-H vs orthogonal vs orthogonal + repair", cmd, [
        (f"Final test error (%) and training loss ({data.name}, {steps} SGD steps, momentum {args.momentum}, "
         f"repair: {solver} {repair_steps} steps, {args.seeds} seeds, mean ± std)",
         C.markdown_table(["net", "sparsity", "method", "test error (%)", "final train loss"], table)),
        ("Figure", "Curves: mean ± std over seeds (shaded).\n\n![curves](trainability_curves.png)\n"),
    ])
    print(f"trainability: wrote {out} in {timer}")
    return {"results": results, "rows": rows}


def main(argv=None) -> dict:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (SPP: 0; SNIP: 0.9)")
    args = p.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
