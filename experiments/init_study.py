"""Initialization study (SPP §4.1, Figure 1): per-layer density after SNIP and Jacobian singular values.

MLP-K (K = 3, 5, 7; width 100; linear and tanh) under VS-L, VS-G, VS-H and orthogonal init, pruned by
SNIP (true labels, one batch of 100, global threshold) at 10..90% sparsity. No training.

    .venv/bin/python -m experiments.init_study [--quick] [--seeds 3] [--data digits|mnist1d] [--out DIR]

Writes ``init_study.csv`` (one row per seed x network x init x sparsity x layer), ``init_study_jsv.csv``,
``init_study.md`` and ``init_study_density_K{K}.png`` (the paper's Figure 1: density per layer, one line per
sparsity). Full mode adds the paired differences between inits with 95% intervals (:mod:`experiments.stats`).
``--from-csv`` rebuilds the markdown and figures from the CSVs in ``--out``.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch

from experiments import common as C
from experiments.stats import mean_interval, paired_difference
from lightning_prune_init import apply_masks

CSVS = ("init_study.csv", "init_study_jsv.csv")
SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def hidden(names: list[str]) -> list[str]:
    """The square width x width layers (all but the first and the last)."""
    return names[1:-1]


DEPTHS = [3, 5, 7]


def run(args) -> dict:
    timer, data = C.start(args)
    probe = data.x_test[:probe_size(args)]
    rows, jsv_rows = [], []
    for seed in range(args.seeds):
        for K in DEPTHS:
            for act in ["linear", "tanh"]:
                for init in C.INITS:
                    model = C.make_model("mlp", init, seed, depth=K, activation=act, input_shape=data.input_shape)
                    for sp in SPARSITIES:
                        masks = C.snip_masks(model, data, sp, seed)
                        for layer, d in C.densities(masks).items():
                            layer = layer.removesuffix(".weight")
                            rows.append(dict(seed=seed, K=K, activation=act, init=init, sparsity=sp, layer=layer, density=d))
                    # JSV before and after pruning at 90%.
                    before_l = C.jsv(model, probe, "layerwise")
                    before_e = C.jsv(model, probe, "end_to_end")["end_to_end"]
                    masks = C.snip_masks(model, data, 0.9, seed)
                    apply_masks(model, masks)
                    after_l = C.jsv(model, probe, "layerwise")
                    after_e = C.jsv(model, probe, "end_to_end")["end_to_end"]
                    jsv_rows.append(dict(
                        seed=seed, K=K, activation=act, init=init,
                        layerwise_mean_before=sum(s.mean for s in before_l.values()) / len(before_l),
                        layerwise_std_before=sum(s.std for s in before_l.values()) / len(before_l),
                        layerwise_mean_after=sum(s.mean for s in after_l.values()) / len(after_l),
                        layerwise_std_after=sum(s.std for s in after_l.values()) / len(after_l),
                        e2e_mean_before=before_e.mean, e2e_std_before=before_e.std, e2e_cond_before=before_e.cond,
                        e2e_mean_after=after_e.mean, e2e_std_after=after_e.std, e2e_cond_after=after_e.cond,
                    ))
    print(f"init_study: grid done in {timer}")
    return C.save_and_report(args, "init_study", dict(zip(CSVS, (rows, jsv_rows))), report, timer)


def probe_size(args) -> int:
    """Inputs of the Jacobian probe: 16 test inputs in quick mode, 64 in full mode."""
    return 16 if args.quick else 64


def report(args, rows: list[dict], jsv_rows: list[dict]) -> dict:
    """Write ``init_study.md`` and the figures from the rows; returns the summary, JSV rows and densities."""
    depths, probe_n = DEPTHS, probe_size(args)
    seeds = len({r["seed"] for r in rows})
    dens = defaultdict(list)  # (K, act, init, sparsity, layer) -> [density per seed]
    for r in rows:
        dens[(r["K"], r["activation"], r["init"], r["sparsity"], r["layer"])].append(r["density"])
    # Summary metrics at 90% sparsity, per seed.
    summary = []
    for K in depths:
        for act in ["linear", "tanh"]:
            for init in C.INITS:
                layers = [f"fc{i}" for i in range(1, K + 1)]
                h = hidden(layers)
                ratio, late = [], []
                for s in range(seeds):
                    d = {l: dens[(K, act, init, 0.9, l)][s] for l in layers}
                    hd = [d[l] for l in h]
                    ratio.append(max(hd) / min(hd) if min(hd) > 0 else float("inf"))
                    late.append(d[h[-1]] / d[h[0]] if d[h[0]] > 0 else float("inf"))
                summary.append(dict(K=K, activation=act, init=init, layers=layers, ratio=ratio, late=late))
    out = args.out

    # Figures: one per K, rows = activation, columns = init, lines = sparsity.
    for K in depths:
        layers = [f"fc{i}" for i in range(1, K + 1)]
        fig, axes = C.plt.subplots(2, 4, figsize=(14, 6), sharey=True)
        cmap = C.plt.get_cmap("viridis")
        for r, act in enumerate(["linear", "tanh"]):
            for c, init in enumerate(C.INITS):
                ax = axes[r][c]
                for i, sp in enumerate(SPARSITIES):
                    means = [C.mean_std(dens[(K, act, init, sp, l)])[0] for l in layers]
                    stds = [C.mean_std(dens[(K, act, init, sp, l)])[1] for l in layers]
                    ax.errorbar(range(1, K + 1), means, yerr=stds, color=cmap(i / (len(SPARSITIES) - 1)),
                                marker="o", ms=3, lw=1, capsize=2, label=f"{int(sp * 100)}%")
                ax.set_title(f"{act}, {init}")
                ax.set_xticks(range(1, K + 1))
                ax.set_ylim(0, 1)
                if r == 1:
                    ax.set_xlabel("layer")
                if c == 0:
                    ax.set_ylabel("density (kept fraction)")
        axes[0][3].legend(title="sparsity", fontsize=7, ncol=2)
        fig.suptitle(f"SNIP per-layer density, MLP-{K} on {args.data} (mean ± std over {seeds} seeds)")
        C.savefig(fig, os.path.join(out, f"init_study_density_K{K}.png"))

    # Markdown.
    t1 = []
    for s in summary:
        K, act, init = s["K"], s["activation"], s["init"]
        per_layer = " / ".join(f"{C.mean_std(dens[(K, act, init, 0.9, l)])[0]:.3f}" for l in s["layers"])
        t1.append([f"MLP-{K}", act, init, per_layer, C.fmt(s["ratio"]), C.fmt(s["late"])])
    t2 = []
    for K in depths:
        for act in ["linear", "tanh"]:
            for init in C.INITS:
                rs = [r for r in jsv_rows if r["K"] == K and r["activation"] == act and r["init"] == init]
                g = lambda k: [r[k] for r in rs]  # noqa: E731
                t2.append([f"MLP-{K}", act, init, C.fmt(g("layerwise_mean_before")), C.fmt(g("layerwise_mean_after")),
                           C.fmt(g("e2e_mean_before"), 3), C.fmt(g("e2e_mean_after"), 3),
                           C.fmt(g("e2e_cond_before"), 1), C.fmt(g("e2e_cond_after"), 1)])
    cmd = C.command_line("init_study", args)
    sections = [
        (f"Per-layer density at 90% sparsity ({args.data}, {seeds} seeds)",
         "Density = kept fraction; layers fc1..fcK (mean over seeds). `hidden max/min`: ratio of the largest "
         "to the smallest density among the hidden width x width layers (1 = uniform). `last/first hidden`: "
         "density of the last hidden layer over the first hidden layer (< 1: later layers pruned more).\n\n"
         + C.markdown_table(["net", "act", "init", "density per layer", "hidden max/min", "last/first hidden"], t1)),
        (f"Jacobian singular values before / after SNIP at 90% (probe: {probe_n} test images, exact)",
         "`layerwise`: mean over layers of each layer Jacobian's mean singular value. `e2e`: input-to-logit "
         "Jacobian, mean singular value and condition number (max/min), pooled over the probe.\n\n"
         + C.markdown_table(["net", "act", "init", "layerwise before", "layerwise after", "e2e mean before",
                             "e2e mean after", "e2e cond before", "e2e cond after"], t2)),
    ]
    diffs = [] if args.quick else differences(summary, jsv_rows)
    if diffs:
        sections.append((
            f"Differences at 90% sparsity, mean over {seeds} seeds [95% interval], paired by seed",
            "`orth. − VS-x (max/min)`: hidden max/min under orthogonal init minus under VS-x (< 0: orthogonal "
            "prunes the hidden layers more uniformly). `VS-H − orth. (last/first)`: the last/first hidden ratio "
            "under VS-H minus under orthogonal (< 0: VS-H prunes the later layers more). `VS-H last/first`: the "
            "ratio itself (< 1: later layers pruned more). `layerwise after − before`: the change of the "
            "layerwise mean singular value by pruning, orthogonal init. MLP-3 has one hidden layer, so its "
            "ratios are 1.\n\n"
            + C.markdown_table(["net", "act", "orth. − VS-L (max/min)", "orth. − VS-G (max/min)",
                                "orth. − VS-H (max/min)", "VS-H − orth. (last/first)", "VS-H last/first",
                                "layerwise after − before (orth.)"],
                               [[d["net"], d["act"], *(d[f"uniform_{v}"].format() for v in ("VS-L", "VS-G", "VS-H")),
                                 d["late"].format(), d["vsh_late"].format(signed=False), d["lw_drop"].format(3)] for d in diffs])))
    sections.append(("Figures", "\n".join(f"![MLP-{K}](init_study_density_K{K}.png)" for K in depths) + "\n"))
    C.write_md(os.path.join(out, "init_study.md"), "Initialization study (SPP Figure 1)", cmd, sections)
    return {"summary": summary, "jsv": jsv_rows, "density": dens, "differences": diffs}


def differences(summary: list[dict], jsv_rows: list[dict]) -> list[dict]:
    """Per network and activation, the paired differences between inits the write-up uses."""
    by = {(s["K"], s["activation"], s["init"]): s for s in summary}
    out = []
    for K in DEPTHS:
        for act in ["linear", "tanh"]:
            orth, vsh = by[(K, act, "orthogonal")], by[(K, act, "VS-H")]
            jsv = [r for r in jsv_rows if r["K"] == K and r["activation"] == act and r["init"] == "orthogonal"]
            out.append(dict(
                net=f"MLP-{K}", act=act,
                **{f"uniform_{v}": paired_difference(orth["ratio"], by[(K, act, v)]["ratio"]) for v in ("VS-L", "VS-G", "VS-H")},
                late=paired_difference(vsh["late"], orth["late"]),
                vsh_late=mean_interval(vsh["late"]),
                lw_drop=paired_difference([r["layerwise_mean_after"] for r in jsv], [r["layerwise_mean_before"] for r in jsv]),
            ))
    return out


def main(argv=None) -> dict:
    return C.study_main(__doc__, run, argv, report=report, csvs=CSVS)


if __name__ == "__main__":
    main()
