"""Supervision (SPP §5.1): SNIP scored with true labels vs label-free (real inputs, uniform target) vs
data-free (Gaussian-noise inputs, uniform target), then training; test error at 90–98% sparsity.

LeNet-300-100, orthogonal init, global threshold, one scoring batch of 100, no repair. Training as in
SNIP's LeNet protocol: SGD lr 0.1, momentum 0.9, batch 100, weight decay 5e-4, 300 steps (``--quick``)
or 10,000 steps.

    .venv/bin/python -m experiments.supervision [--quick] [--seeds 3] [--data digits|mnist1d] [--out DIR]

Writes ``supervision.csv``, ``supervision.md`` and ``supervision.png``. Full mode adds the paired differences
of the test error with 95% intervals (:mod:`experiments.stats`). ``--from-csv`` rebuilds the markdown and
figure from the CSV in ``--out``.
"""

from __future__ import annotations

import os

from experiments import common as C
from experiments.stats import paired_difference

SUPERVISION = {"true labels": "labels", "label-free": "label_free", "data-free": "data_free"}
SPARSITIES = [0.9, 0.95, 0.98]
CSVS = ("supervision.csv",)


def train_steps(args) -> int:
    """SGD steps: 300 in quick mode, 10,000 in full mode."""
    return 300 if args.quick else 10000


def run(args) -> dict:
    timer, data = C.start(args)
    steps = train_steps(args)
    rows = []
    for sp in SPARSITIES:
        for name, sup in SUPERVISION.items():
            for seed in range(args.seeds):
                model = C.make_model("lenet300", "orthogonal", seed, input_shape=data.input_shape)
                masks = C.snip_masks(model, data, sp, seed, supervision=sup)
                dens = C.densities(masks)
                r = C.train(model, data, steps=steps, seed=seed, masks=masks, momentum=0.9, eval_every=steps)
                rows.append(dict(sparsity=sp, supervision=name, seed=seed, test_error=r.final_error,
                                 train_loss=r.final_train_loss, **{f"density_{k.removesuffix('.weight')}": v for k, v in dens.items()}))
    print(f"supervision: grid done in {timer}")
    return C.save_and_report(args, "supervision", dict(zip(CSVS, (rows,))), report, timer)


def report(args, rows: list[dict]) -> dict:
    """Write ``supervision.md`` and the figure from the rows; returns the errors per setting and the rows."""
    out, steps = args.out, train_steps(args)
    results: dict = {}
    for r in rows:
        results.setdefault((r["sparsity"], r["supervision"]), []).append(r["test_error"])
    seeds = len(results[(SPARSITIES[0], "true labels")])
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
    ax.set_title(f"LeNet-300-100 on {args.data}: SNIP supervision")
    ax.legend()
    C.savefig(fig, os.path.join(out, "supervision.png"))
    cmd = C.command_line("supervision", args)
    sections = [
        (f"Test error (%), LeNet-300-100, orthogonal init ({args.data}, {steps} SGD steps, {seeds} seeds, mean ± std)",
         "Density columns: kept fraction of fc1 / fc2 / fc3 (mean over seeds).\n\n"
         + C.markdown_table(["sparsity", *SUPERVISION, *(f"density ({n})" for n in SUPERVISION)], table)),
    ]
    diffs = [] if args.quick else differences(results)
    if diffs:
        sections.append((
            f"Differences of the test error (points), mean over {seeds} seeds [95% interval], paired by seed",
            "> 0: the first scoring gives a higher test error than the second.\n\n"
            + C.markdown_table(["sparsity", "label-free − true labels", "data-free − true labels"],
                               [[f"{int(d['sparsity'] * 100)}%", d["label_free"].format(), d["data_free"].format()]
                                for d in diffs])))
    sections.append(("Figure", "![supervision](supervision.png)\n"))
    C.write_md(os.path.join(out, "supervision.md"), "Supervision: true labels vs label-free vs data-free", cmd, sections)
    return {"results": results, "rows": rows, "differences": diffs}


def differences(results: dict) -> list[dict]:
    """Per sparsity, the paired differences of the test error against scoring with true labels."""
    return [dict(sparsity=sp,
                 label_free=paired_difference(results[(sp, "label-free")], results[(sp, "true labels")]),
                 data_free=paired_difference(results[(sp, "data-free")], results[(sp, "true labels")]))
            for sp in SPARSITIES]


def main(argv=None) -> dict:
    return C.study_main(__doc__, run, argv, report=report, csvs=CSVS)


if __name__ == "__main__":
    main()
