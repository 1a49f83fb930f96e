"""Initialization study (SPP §4.1, Figure 1): per-layer density after SNIP and Jacobian singular values.

MLP-K (K = 3, 5, 7; width 100; linear and tanh) under VS-L, VS-G, VS-H and orthogonal init, pruned by
SNIP (true labels, one batch of 100, global threshold) at 10..90% sparsity. No training.

    .venv/bin/python -m experiments.init_study [--quick] [--seeds 3] [--out docs/results]

Writes ``init_study.csv`` (one row per seed x network x init x sparsity x layer), ``init_study.md`` and
``init_study_density_K{K}.png`` (the paper's Figure 1: density per layer, one line per sparsity).
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch

from experiments import common as C
from lightning_prune_init import apply_masks

SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def hidden(names: list[str]) -> list[str]:
    """The square width x width layers (all but the first and the last)."""
    return names[1:-1]


def run(args) -> dict:
    C.setup_torch()
    timer = C.Timer()
    data = C.load_data(args.data, args.root)
    depths = [3, 5, 7]
    probe_n = 16 if args.quick else 64
    probe = data.x_test[:probe_n]
    rows, jsv_rows = [], []
    dens = defaultdict(list)  # (K, act, init, sparsity, layer) -> [density per seed]
    for seed in range(args.seeds):
        for K in depths:
            for act in ["linear", "tanh"]:
                for init in C.INITS:
                    model = C.make_model("mlp", init, seed, depth=K, activation=act)
                    for sp in SPARSITIES:
                        masks = C.snip_masks(model, data, sp, seed)
                        for layer, d in C.densities(masks).items():
                            layer = layer.removesuffix(".weight")
                            dens[(K, act, init, sp, layer)].append(d)
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

    # Summary metrics at 90% sparsity, per seed.
    summary = []
    for K in depths:
        for act in ["linear", "tanh"]:
            for init in C.INITS:
                layers = [f"fc{i}" for i in range(1, K + 1)]
                h = hidden(layers)
                ratio, late = [], []
                for s in range(args.seeds):
                    d = {l: dens[(K, act, init, 0.9, l)][s] for l in layers}
                    hd = [d[l] for l in h]
                    ratio.append(max(hd) / min(hd) if min(hd) > 0 else float("inf"))
                    late.append(d[h[-1]] / d[h[0]] if d[h[0]] > 0 else float("inf"))
                summary.append(dict(K=K, activation=act, init=init, layers=layers, ratio=ratio, late=late))
    out = args.out
    C.write_csv(os.path.join(out, "init_study.csv"), rows)
    C.write_csv(os.path.join(out, "init_study_jsv.csv"), jsv_rows)

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
        fig.suptitle(f"SNIP per-layer density, MLP-{K} on {data.name} (mean ± std over {args.seeds} seeds)")
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
    C.write_md(os.path.join(out, "init_study.md"), "Initialization study (SPP Figure 1)", cmd, [
        (f"Per-layer density at 90% sparsity ({data.name}, {args.seeds} seeds)",
         "Density = kept fraction; layers fc1..fcK (mean over seeds). `hidden max/min`: ratio of the largest "
         "to the smallest density among the hidden width x width layers (1 = uniform). `last/first hidden`: "
         "density of the last hidden layer over the first hidden layer (< 1: later layers pruned more).\n\n"
         + C.markdown_table(["net", "act", "init", "density per layer", "hidden max/min", "last/first hidden"], t1)),
        (f"Jacobian singular values before / after SNIP at 90% (probe: {probe_n} test images, exact)",
         "`layerwise`: mean over layers of each layer Jacobian's mean singular value. `e2e`: input-to-logit "
         "Jacobian, mean singular value and condition number (max/min), pooled over the probe.\n\n"
         + C.markdown_table(["net", "act", "init", "layerwise before", "layerwise after", "e2e mean before",
                             "e2e mean after", "e2e cond before", "e2e cond after"], t2)),
        ("Figures", "\n".join(f"![MLP-{K}](init_study_density_K{K}.png)" for K in depths) + "\n"),
    ])
    print(f"init_study: wrote {out} in {timer}")
    return {"summary": summary, "jsv": jsv_rows, "density": dens}


def main(argv=None) -> dict:
    args = C.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
