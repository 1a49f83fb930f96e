"""Supervision (SPP §5.1): SNIP scored with true labels vs label-free (real inputs, uniform target) vs
data-free (Gaussian-noise inputs, uniform target), then training; test error at 90–98% sparsity.

LeNet-300-100, orthogonal init, global threshold, one scoring batch of 100, no repair. Training as in
SNIP's LeNet protocol: SGD lr 0.1, momentum 0.9, batch 100, weight decay 5e-4, 300 steps (``--quick``)
or 10,000 steps.

    .venv/bin/python -m experiments.supervision [--quick] [--seeds 3] [--out docs/results]

Writes ``supervision.csv``, ``supervision.md`` and ``supervision.png``.
"""

from __future__ import annotations

import os

from experiments import common as C

SUPERVISION = {"true labels": "labels", "label-free": "label_free", "data-free": "data_free"}
SPARSITIES = [0.9, 0.95, 0.98]


def run(args) -> dict:
    C.setup_torch()
    timer = C.Timer()
    data = C.load_data(args.data, args.root)
    steps = 300 if args.quick else 10000
    rows, results = [], {}
    for sp in SPARSITIES:
        for name, sup in SUPERVISION.items():
            for seed in range(args.seeds):
                model = C.make_model("lenet300", "orthogonal", seed)
                masks = C.snip_masks(model, data, sp, seed, supervision=sup)
                dens = C.densities(masks)
                r = C.train(model, data, steps=steps, seed=seed, masks=masks, momentum=0.9, eval_every=steps)
                results.setdefault((sp, name), []).append(r.final_error)
                rows.append(dict(sparsity=sp, supervision=name, seed=seed, test_error=r.final_error,
                                 train_loss=r.final_train_loss, **{f"density_{k.removesuffix('.weight')}": v for k, v in dens.items()}))
    print(f"supervision: grid done in {timer}")
    out = args.out
    C.write_csv(os.path.join(out, "supervision.csv"), rows)
    table = []
    for sp in SPARSITIES:
        cells = [f"{int(sp * 100)}%"]
        for name in SUPERVISION:
            cells.append(C.fmt(results[(sp, name)]))
        dens_cells = []
        for name in SUPERVISION:
            rs = [r for r in rows if r["sparsity"] == sp and r["supervision"] == name]
            dens_cells.append(" / ".join(f"{C.mean_std([r[f'density_fc{i}'] for r in rs])[0]:.3f}" for i in (1, 2, 3)))
        table.append(cells + dens_cells)
    fig, ax = C.plt.subplots(figsize=(6, 4))
    for name in SUPERVISION:
        ms = [C.mean_std(results[(sp, name)]) for sp in SPARSITIES]
        ax.errorbar([100 * s for s in SPARSITIES], [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=name)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"LeNet-300-100 on {data.name}: SNIP supervision")
    ax.legend()
    C.savefig(fig, os.path.join(out, "supervision.png"))
    cmd = C.command_line("supervision", args)
    C.write_md(os.path.join(out, "supervision.md"), "Supervision: true labels vs label-free vs data-free", cmd, [
        (f"Test error (%), LeNet-300-100, orthogonal init ({data.name}, {steps} SGD steps, {args.seeds} seeds, mean ± std)",
         "Density columns: kept fraction of fc1 / fc2 / fc3 (mean over seeds).\n\n"
         + C.markdown_table(["sparsity", *SUPERVISION, *(f"density ({n})" for n in SUPERVISION)], table)),
        ("Figure", "![supervision](supervision.png)\n"),
    ])
    print(f"supervision: wrote {out} in {timer}")
    return {"results": results, "rows": rows}


def main(argv=None) -> dict:
    args = C.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
