"""Signal propagation (SPP §4.2, §5): Jacobian singular values after init, after pruning (SNIP and
random pruning) and after the data-free approximate-isometry repair. No training.

MLP-7 (width 100; linear and tanh), orthogonal init, 90% sparsity (global), SNIP on one batch of 100
true-labelled images; random pruning by ``criterion_masks(criterion="random")``; repair by
``approximate_isometry`` (plain SGD, lr 0.1, target I; 10,000 steps as in the authors' code, 1,000 in
``--quick``).

    .venv/bin/python -m experiments.signal_propagation [--quick] [--seeds 3] [--data digits|mnist1d] [--out DIR]

Writes ``signal_propagation.csv`` (seed x activation x stage x layer), ``signal_propagation.md`` and
``signal_propagation.png``. Full mode adds the paired differences between stages with 95% intervals
(:mod:`experiments.stats`). ``--from-csv`` rebuilds the markdown and figure from the CSV in ``--out``.
"""

from __future__ import annotations

import copy
import os

from experiments import common as C
from experiments.stats import paired_difference
from lightning_prune_init import apply_masks

CSVS = ("signal_propagation.csv",)
STAGES = ["init", "SNIP", "SNIP + repair", "random", "random + repair"]


def settings(args) -> tuple[int, int]:
    """Repair steps and probe size: 1,000 and 16 in quick mode, 10,000 and 64 in full mode."""
    return (1000, 16) if args.quick else (10000, 64)


def run(args) -> dict:
    timer, data = C.start(args)
    steps, probe_n = settings(args)
    probe = data.x_test[:probe_n]
    sparsity = 0.9
    rows = []
    for seed in range(args.seeds):
        for act in ["linear", "tanh"]:
            base = C.make_model("mlp", "orthogonal", seed, depth=7, activation=act, input_shape=data.input_shape)
            models = {"init": base}
            for crit in ["SNIP", "random"]:
                m = copy.deepcopy(base)
                masks = C.snip_masks(m, data, sparsity, seed) if crit == "SNIP" else C.random_masks(m, sparsity, seed)
                apply_masks(m, masks)
                models[crit] = m
                r = copy.deepcopy(m)
                apply_masks(r, masks)
                C.repair(r, steps)
                models[f"{crit} + repair"] = r
            for stage in STAGES:
                lw = C.jsv(models[stage], probe, "layerwise")
                e2e = C.jsv(models[stage], probe, "end_to_end")["end_to_end"]
                for layer, s in lw.items():
                    rows.append(dict(seed=seed, activation=act, stage=stage, scope="layerwise", layer=layer,
                                     mean=s.mean, std=s.std, min=s.min, max=s.max, cond=s.cond))
                rows.append(dict(seed=seed, activation=act, stage=stage, scope="end_to_end", layer="end_to_end",
                                 mean=e2e.mean, std=e2e.std, min=e2e.min, max=e2e.max, cond=e2e.cond))
    print(f"signal_propagation: grid done in {timer}")
    return C.save_and_report(args, "signal_propagation", dict(zip(CSVS, (rows,))), report, timer)


def report(args, rows: list[dict]) -> dict:
    """Write ``signal_propagation.md`` and the figure from the rows; returns the summary and the rows."""
    out = args.out
    steps, probe_n = settings(args)
    seeds = len({r["seed"] for r in rows})

    def per_seed(act, stage, key, scope="layerwise", reduce="mean"):
        vals = []
        for s in range(seeds):
            rs = [r[key] for r in rows if r["seed"] == s and r["activation"] == act and r["stage"] == stage and r["scope"] == scope]
            vals.append(sum(rs) / len(rs))
        return vals

    def dist1(act, stage):
        """Mean over layers of |mean singular value - 1| + std: distance of the layer spectra from 1."""
        vals = []
        for s in range(seeds):
            rs = [r for r in rows if r["seed"] == s and r["activation"] == act and r["stage"] == stage and r["scope"] == "layerwise"]
            vals.append(sum(abs(r["mean"] - 1) + r["std"] for r in rs) / len(rs))
        return vals

    summary = {}
    table = []
    for act in ["linear", "tanh"]:
        for stage in STAGES:
            summary[(act, stage)] = dict(dist=dist1(act, stage), lw_mean=per_seed(act, stage, "mean"),
                                         lw_std=per_seed(act, stage, "std"),
                                         e2e_mean=per_seed(act, stage, "mean", "end_to_end"),
                                         e2e_cond=per_seed(act, stage, "cond", "end_to_end"))
            s = summary[(act, stage)]
            table.append([act, stage, C.fmt(s["lw_mean"], 3), C.fmt(s["lw_std"], 3), C.fmt(s["dist"], 3),
                          C.fmt(s["e2e_mean"], 3), C.fmt(s["e2e_cond"], 1)])

    fig, axes = C.plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, act in zip(axes, ["linear", "tanh"]):
        layers = [r["layer"] for r in rows if r["seed"] == 0 and r["activation"] == act and r["stage"] == "init" and r["scope"] == "layerwise"]
        for stage in STAGES:
            ms, ss = [], []
            for layer in layers:
                v = [r["mean"] for r in rows if r["activation"] == act and r["stage"] == stage and r["layer"] == layer]
                m, s = C.mean_std(v)
                ms.append(m)
                ss.append(s)
            ax.errorbar(range(1, len(layers) + 1), ms, yerr=ss, marker="o", ms=3, capsize=2, label=stage)
        ax.axhline(1.0, color="grey", lw=0.5, ls="--")
        ax.set_title(f"MLP-7 {act}, orthogonal init, 90% sparsity")
        ax.set_xlabel("layer")
        ax.set_ylabel("mean singular value of the layer Jacobian")
        ax.legend(fontsize=7)
    C.savefig(fig, os.path.join(out, "signal_propagation.png"))

    cmd = C.command_line("signal_propagation", args)
    sections = [
        (f"Jacobian singular values, MLP-7, orthogonal init, 90% sparsity ({args.data}, {seeds} seeds, repair {steps} SGD steps)",
         "`layerwise mean`/`layerwise std`: mean and std of each layer Jacobian's singular values (probe of "
         f"{probe_n} test images, exact), averaged over the 7 layers. `dist. from 1`: average over layers of "
         "|mean − 1| + std (0 = every layer isometric). `e2e`: input-to-logit Jacobian.\n\n"
         + C.markdown_table(["act", "stage", "layerwise mean", "layerwise std", "dist. from 1", "e2e mean", "e2e cond"], table)),
    ]
    diffs = [] if args.quick else differences(summary)
    if diffs:
        sections.append((
            f"Differences of `dist. from 1`, mean over {seeds} seeds [95% interval], paired by seed",
            "< 0: the first stage is closer to isometry than the second.\n\n"
            + C.markdown_table(["act", "SNIP + repair − SNIP", "random + repair − random", "random − SNIP",
                                "random + repair − SNIP + repair", "SNIP + repair − init"],
                               [[d["act"], *(d[k].format(3) for k in ("repair_snip", "repair_random", "random_vs_snip",
                                                                      "repaired_random_vs_snip", "repaired_vs_init"))]
                                for d in diffs])))
    sections.append(("Figure", "![signal propagation](signal_propagation.png)\n"))
    C.write_md(os.path.join(out, "signal_propagation.md"), "Signal propagation: init, pruning, repair", cmd, sections)
    return {"summary": summary, "rows": rows, "differences": diffs}


def differences(summary: dict) -> list[dict]:
    """Per activation, the paired differences of the distance from isometry the write-up uses."""
    out = []
    for act in ["linear", "tanh"]:
        d = {stage: summary[(act, stage)]["dist"] for stage in STAGES}
        out.append(dict(
            act=act,
            repair_snip=paired_difference(d["SNIP + repair"], d["SNIP"]),
            repair_random=paired_difference(d["random + repair"], d["random"]),
            random_vs_snip=paired_difference(d["random"], d["SNIP"]),
            repaired_random_vs_snip=paired_difference(d["random + repair"], d["SNIP + repair"]),
            repaired_vs_init=paired_difference(d["SNIP + repair"], d["init"]),
        ))
    return out


def main(argv=None) -> dict:
    return C.study_main(__doc__, run, argv, report=report, csvs=CSVS)


if __name__ == "__main__":
    main()
