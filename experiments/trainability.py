"""Trainability (SPP §4.3, Table 1): SNIP under VS-H init vs orthogonal init vs orthogonal init + the
approximate-isometry repair, then training.

Networks: MLP-7 tanh (width 100) and LeNet-300-100; on MNIST-1D (``--data mnist1d``) also its 1-D CNN
(``conv1d``). Sparsity 90% (``--quick``) or 90/95/98% (full).
Protocol: SNIP on one batch of 100 true-labelled images, global threshold, prune, (repair: plain SGD,
lr 0.1, target I, 10,000 steps as the authors; ``--quick`` uses the package's conjugate-gradient solver,
100 steps), then plain SGD as in SPP's MNIST code: lr 0.1, no momentum (``--momentum``), batch 100,
weight decay 5e-4, for 500 (``--quick``) or 10,000 steps. A dense network (orthogonal init) is the
reference. Full mode adds, for every difference the write-up uses, its mean over seeds and 95% interval
(paired by seed, :mod:`experiments.stats`).

    .venv/bin/python -m experiments.trainability [--quick] [--seeds 3] [--data digits|mnist1d] [--out DIR]

Writes ``trainability.csv`` (final numbers per run), ``trainability_curves.csv`` (test error and training
loss every ``eval_every`` steps), ``trainability.md`` and ``trainability_curves.png``. ``--from-csv``
rebuilds the markdown and the figure from the two CSVs in ``--out``.
"""

from __future__ import annotations

import os

import numpy as np

from experiments import common as C
from experiments.stats import paired_difference

METHODS = {  # name -> (init, repair?)
    "VS-H": ("VS-H", False),
    "orthogonal": ("orthogonal", False),
    "orthogonal + repair": ("orthogonal", True),
}
NETS = {"MLP-7 tanh": ("mlp", 7, "tanh"), "LeNet-300-100": ("lenet300", None, None)}
NETS_1D = {**NETS, "CNN-1D": ("conv1d", None, None)}
CSVS = ("trainability.csv", "trainability_curves.csv")


def nets_for(data_name: str) -> dict:
    """The networks of the study on a data set: MNIST-1D adds its 1-D CNN."""
    return NETS_1D if data_name == "mnist1d" else NETS


def settings(args) -> dict:
    """Sparsities, training steps, repair and evaluation period of quick or full mode."""
    quick = args.quick
    return dict(sparsities=[0.9] if quick else [0.9, 0.95, 0.98], steps=500 if quick else 10000,
                repair_steps=100 if quick else 10000, solver="cg" if quick else "sgd",
                eval_every=25 if quick else 500)


def run(args) -> dict:
    timer, data = C.start(args)
    s = settings(args)
    rows, curves = [], []
    for net, (arch, depth, act) in nets_for(args.data).items():
        for sp in [0.0] + s["sparsities"]:
            for method, (init, rep) in METHODS.items():
                if sp == 0.0 and method != "orthogonal":
                    continue
                name = "dense" if sp == 0.0 else method
                for seed in range(args.seeds):
                    model = C.make_model(arch, init, seed, depth=depth or 7, activation=act or "tanh",
                                         input_shape=data.input_shape)
                    masks = None
                    if sp > 0:
                        masks = C.snip_masks(model, data, sp, seed)
                        if rep:
                            C.apply_masks(model, masks)
                            C.repair(model, s["repair_steps"], s["solver"])
                    r = C.train(model, data, steps=s["steps"], seed=seed, masks=masks, eval_every=s["eval_every"],
                                momentum=args.momentum)
                    rows.append(dict(net=net, sparsity=sp, method=name, seed=seed, test_error=r.final_error,
                                     train_loss=r.final_train_loss))
                    for st, e, l in zip(r.eval_steps, r.errors, r.losses):
                        curves.append(dict(net=net, sparsity=sp, method=name, seed=seed, step=st, test_error=e, train_loss=l))
        print(f"trainability: {net} done in {timer}")
    return C.save_and_report(args, "trainability", dict(zip(CSVS, (rows, curves))), report, timer)


def _results(rows: list[dict], curves: list[dict]) -> dict:
    """``(net, sparsity, method) -> [TrainResult per seed]``, in seed order."""
    per_run: dict = {}
    for c in curves:
        per_run.setdefault((c["net"], c["sparsity"], c["method"], c["seed"]), []).append(c)
    results: dict = {}
    for r in rows:
        cs = per_run[(r["net"], r["sparsity"], r["method"], r["seed"])]
        results.setdefault((r["net"], r["sparsity"], r["method"]), []).append(C.TrainResult(
            [c["train_loss"] for c in cs], [c["test_error"] for c in cs], [c["step"] for c in cs],
            r["test_error"], r["train_loss"]))
    return results


def differences(results: dict, nets, sparsities) -> list[dict]:
    """Per net and sparsity, the paired differences the write-up uses (test error in points, train loss)."""
    out = []
    for net in nets:
        dense = [r.final_error for r in results[(net, 0.0, "dense")]]
        for sp in sparsities:
            get = lambda m, key="final_error": [getattr(r, key) for r in results[(net, sp, m)]]  # noqa: E731
            early = lambda m: [r.errors[0] for r in results[(net, sp, m)]]  # noqa: E731
            out.append(dict(
                net=net, sparsity=sp, first_step=results[(net, sp, "orthogonal")][0].eval_steps[0],
                repair_error=paired_difference(get("orthogonal + repair"), get("orthogonal")),
                repair_loss=paired_difference(get("orthogonal + repair", "final_train_loss"),
                                              get("orthogonal", "final_train_loss")),
                repair_early=paired_difference(early("orthogonal + repair"), early("orthogonal")),
                vsh_error=paired_difference(get("VS-H"), get("orthogonal")),
                vsh_vs_repair=paired_difference(get("VS-H"), get("orthogonal + repair")),
                sparse_vs_dense=paired_difference(get("orthogonal"), dense),
            ))
    return out


def report(args, rows: list[dict], curves: list[dict]) -> dict:
    """Write ``trainability.md`` and ``trainability_curves.png`` from the rows; returns results and rows."""
    s = settings(args)
    sparsities, out = s["sparsities"], args.out
    nets = list(dict.fromkeys(r["net"] for r in rows))
    results = _results(rows, curves)
    seeds = len(results[(nets[0], 0.0, "dense")])
    table = []
    for net in nets:
        for sp in [0.0] + sparsities:
            for name in (["dense"] if sp == 0.0 else list(METHODS)):
                rs = results[(net, sp, name)]
                table.append([net, f"{int(sp * 100)}%", name, C.fmt([r.final_error for r in rs]),
                              C.fmt([r.final_train_loss for r in rs], 4)])

    fig, axes = C.plt.subplots(2, len(nets) * len(sparsities), figsize=(5 * len(nets) * len(sparsities), 7), squeeze=False)
    col = 0
    for net in nets:
        for sp in sparsities:
            for name in list(METHODS) + ["dense"]:
                rs = results[(net, 0.0 if name == "dense" else sp, name)]
                xs = rs[0].eval_steps
                for row, key in enumerate(["losses", "errors"]):
                    a = np.array([getattr(r, key) for r in rs], dtype=float)
                    m, sd = a.mean(0), a.std(0, ddof=1) if len(rs) > 1 else 0 * a.mean(0)
                    ax = axes[row][col]
                    ax.plot(xs, m, label=name, ls="--" if name == "dense" else "-")
                    ax.fill_between(xs, m - sd, m + sd, alpha=0.2)
            axes[0][col].set_title(f"{net}, {int(sp * 100)}% sparsity")
            axes[0][col].set_ylabel("training loss")
            axes[0][col].set_yscale("log")
            axes[1][col].set_ylabel("test error (%)")
            axes[1][col].set_xlabel("step")
            axes[0][col].legend(fontsize=7)
            col += 1
    C.savefig(fig, os.path.join(out, "trainability_curves.png"))

    sections = [
        (f"Final test error (%) and training loss ({args.data}, {s['steps']} SGD steps, momentum {args.momentum}, "
         f"repair: {s['solver']} {s['repair_steps']} steps, {seeds} seeds, mean ± std)",
         C.markdown_table(["net", "sparsity", "method", "test error (%)", "final train loss"], table)),
    ]
    diffs = []
    if not args.quick:
        diffs = differences(results, nets, sparsities)
        step = diffs[0]["first_step"]
        cells = [[d["net"], f"{int(d['sparsity'] * 100)}%", d["repair_error"].format(), d["repair_loss"].format(4),
                  d["repair_early"].format(1), d["vsh_error"].format(), d["vsh_vs_repair"].format(),
                  d["sparse_vs_dense"].format()] for d in diffs]
        sections.append((
            f"Differences, mean over {seeds} seeds [95% interval], paired by seed",
            "Test error in points, training loss in nats; an interval that excludes 0 is a difference beyond "
            f"seed noise. `@ step {step}`: test error at the first evaluation.\n\n"
            + C.markdown_table(["net", "sparsity", "repair − orth. (error)", "repair − orth. (train loss)",
                                f"repair − orth. (error @ step {step})", "VS-H − orth. (error)",
                                "VS-H − (orth. + repair) (error)", "orth. − dense (error)"], cells)))
    sections.append(("Figure", "Curves: mean ± std over seeds (shaded).\n\n![curves](trainability_curves.png)\n"))
    C.write_md(os.path.join(out, "trainability.md"), "Trainability: VS-H vs orthogonal vs orthogonal + repair",
               C.command_line("trainability", args), sections)
    return {"results": results, "rows": rows, "differences": diffs}


def main(argv=None) -> dict:
    return C.study_main(__doc__, run, argv, report=report, csvs=CSVS, extra=lambda p: p.add_argument(
        "--momentum", type=float, default=0.0, help="SGD momentum (SPP: 0; SNIP: 0.9)"))


if __name__ == "__main__":
    main()
