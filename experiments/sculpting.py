"""Architecture sculpting (SPP §5.2): prune an oversized MLP at initialization, without labels or
without data, to the weight budget of LeNet-300-100, train it on the digits, and compare with
LeNet-300-100 itself.

Oversized network: MLP-5, width 500, ReLU (1,147,000 weights); budget: LeNet-300-100's 266,200 weights
(sparsity 1 − 266,200/1,147,000 = 76.8%). Orthogonal init, SNIP with the label-free loss on one batch
of 100 digits images ("label-free") or on Gaussian noise ("data-free"), global threshold, no repair.
Training: SGD lr 0.1, momentum 0.9, batch 100, weight decay 5e-4, 300 (``--quick``) or 10,000 steps.

    .venv/bin/python -m experiments.sculpting [--quick] [--seeds 3] [--out docs/results]

Writes ``sculpting.csv``, ``sculpting.md`` and ``sculpting.png``.
"""

from __future__ import annotations

import os

import numpy as np

from experiments import common as C
from lightning_prune_init.papers import build_network, count_weights

WIDTH, DEPTH = 500, 5


def run(args) -> dict:
    timer, data = C.start(args)
    steps = 300 if args.quick else 10000
    shape = data.input_shape
    budget = count_weights(build_network("lenet300", input_shape=shape))
    big = count_weights(build_network("mlp", depth=DEPTH, width=WIDTH, activation="relu", input_shape=shape))
    sparsity = 1 - budget / big
    rows, results = [], {}
    configs = ["LeNet-300-100 (dense)", f"MLP-{DEPTH}x{WIDTH} label-free", f"MLP-{DEPTH}x{WIDTH} data-free",
               f"MLP-{DEPTH}x{WIDTH} random"]
    for name in configs:
        for seed in range(args.seeds):
            if name.startswith("LeNet"):
                model = C.make_model("lenet300", "orthogonal", seed, input_shape=shape)
                masks, kept = None, budget
            else:
                model = C.make_model("mlp", "orthogonal", seed, depth=DEPTH, activation="relu", width=WIDTH,
                                     input_shape=shape)
                if name.endswith("random"):
                    masks = C.random_masks(model, sparsity, seed)
                else:
                    masks = C.snip_masks(model, data, sparsity, seed, supervision="label_free" if "label-free" in name else "data_free")
                kept = int(sum(int(m.sum()) for m in masks.values()))
            r = C.train(model, data, steps=steps, seed=seed, masks=masks, momentum=0.9, eval_every=25 if args.quick else 500)
            results.setdefault(name, []).append(r)
            rows.append(dict(config=name, seed=seed, weights=kept, test_error=r.final_error, train_loss=r.final_train_loss))
    print(f"sculpting: grid done in {timer}")
    out = args.out
    C.write_csv(os.path.join(out, "sculpting.csv"), rows)
    table = [[n, rows[[r["config"] for r in rows].index(n)]["weights"], C.fmt([r.final_error for r in results[n]]),
              C.fmt([r.final_train_loss for r in results[n]], 4)] for n in configs]
    fig, ax = C.plt.subplots(figsize=(6, 4))
    for n in configs:
        a = np.array([r.errors for r in results[n]])
        xs = results[n][0].eval_steps
        ax.plot(xs, a.mean(0), label=n)
        ax.fill_between(xs, a.mean(0) - a.std(0, ddof=1), a.mean(0) + a.std(0, ddof=1), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 20)
    ax.legend(fontsize=7)
    ax.set_title(f"Sculpting to LeNet-300-100's budget ({data.name})")
    C.savefig(fig, os.path.join(out, "sculpting.png"))
    cmd = C.command_line("sculpting", args)
    C.write_md(os.path.join(out, "sculpting.md"), "Architecture sculpting", cmd, [
        (f"Test error (%) at equal weight budget ({data.name}, {steps} SGD steps, {args.seeds} seeds, mean ± std; "
         f"MLP sparsity {100 * sparsity:.1f}%)",
         C.markdown_table(["network", "weights", "test error (%)", "final train loss"], table)),
        ("Figure", "![sculpting](sculpting.png)\n"),
    ])
    print(f"sculpting: wrote {out} in {timer}")
    return {"results": {n: [r.final_error for r in rs] for n, rs in results.items()}, "rows": rows, "sparsity": sparsity}


def main(argv=None) -> dict:
    return C.study_main(__doc__, run, argv)


if __name__ == "__main__":
    main()
