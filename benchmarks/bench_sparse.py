"""Sparse execution, side by side: training-step time across densities, peak training memory, inference latency,
crossover density per layer size, ``"auto"`` against dense, and a sparse convolution path (im2col + CSR).

Every table compares variants measured in one run, interleaved round by round (machine drift hits them alike);
medians over rounds. Run: ``.venv/bin/python benchmarks/bench_sparse.py [--rounds 7] [--threads 2]``; each
section alone with ``--only mlp|block|memory|inference|crossover|auto|conv``. CPU only (the GPU rows of
docs/sparse.md are not measured without a GPU).

Variants of a training step (forward, backward, SGD momentum 0.9 + weight decay 5e-4):

* ``dense``: the plain model;
* ``masked``: ``apply_masks`` with the optimizer attached (the package without sparse execution);
* ``sparse``: the same masks, ``enable_sparse_execution(model, "on")``, the optimizer built on the compact values.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init import apply_masks, connection_sensitivity, remove_masks, select_masks
from lightning_prune_init.sparse import CsrStructure, enable_sparse_execution, time_layer

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

MLP_DENSITIES = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001)


def mlp(width: int = 2048, depth: int = 3, classes: int = 10) -> nn.Sequential:
    """``width → width`` Linear + ReLU, ``depth`` times, then a ``classes``-way head (input ``width``)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


class MLPBlock(nn.Module):
    """A transformer MLP block: ``x + W₂ GELU(W₁ LayerNorm(x))`` (``d → 4d → d``)."""

    def __init__(self, d: int = 768) -> None:
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def _variants(base: nn.Module, masks: dict, which=("dense", "masked", "sparse")) -> dict:
    """``{variant: (model, optimizer)}``; each variant a deep copy of ``base``."""
    out = {}
    for name in which:
        model = copy.deepcopy(base).train()
        if name == "dense":
            out[name] = (model, _sgd(model))
        elif name == "masked":
            optimizer = _sgd(model)
            apply_masks(model, masks, optimizers=[optimizer])
            out[name] = (model, optimizer)
        else:
            apply_masks(model, masks)
            enable_sparse_execution(model, "on")
            out[name] = (model, _sgd(model))
    return out


def _step(model, optimizer, loss_fn):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        optimizer.step()

    return step


def _median_ms(fns: dict, rounds: int, steps: int = 1) -> dict:
    """Median milliseconds per call of each function, interleaved round by round after one warm-up call."""
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            samples[key].append((time.perf_counter() - start) / steps * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def _mlp_case(density: float, batch: int = 256):
    torch.manual_seed(0)
    base = mlp()
    x, y = torch.randn(batch, 2048), torch.randint(0, 10, (batch,))
    scores = connection_sensitivity(base, [(x, y)])
    masks = select_masks(scores, 1 - density, scope="layerwise", on_layer_collapse="ignore")
    return base, masks, (lambda model: F.cross_entropy(model(x), y)), x


def _block_case(density: float, tokens: int = 1024, d: int = 768):
    torch.manual_seed(0)
    base = MLPBlock(d)
    x = torch.randn(tokens // 128, 128, d)
    target = torch.randn_like(x)
    scores = {n: p.detach().abs() for n, p in base.named_parameters() if p.dim() == 2}  # magnitude, layerwise
    masks = select_masks(scores, 1 - density, scope="layerwise", on_layer_collapse="ignore")
    return base, masks, (lambda model: F.mse_loss(model(x), target)), x


def bench_steps(case, densities, rounds: int, title: str) -> None:
    print(f"\n### {title}\n")
    print("| density | dense step (ms) | masked (ms) | sparse (ms) | sparse/dense | masked/dense |")
    print("|---:|---:|---:|---:|---:|---:|")
    for density in densities:
        base, masks, loss_fn, _ = case(density)
        variants = _variants(base, masks)
        ms = _median_ms({k: _step(m, o, loss_fn) for k, (m, o) in variants.items()}, rounds)
        sparse_model = variants["sparse"][0]
        zeros = all(torch.count_nonzero(sparse_model.state_dict()[n][~m]) == 0 for n, m in masks.items())
        assert zeros, "pruned entries must stay exactly 0"
        print(
            f"| {density:.1%} | {ms['dense']:.2f} | {ms['masked']:.2f} | {ms['sparse']:.2f} "
            f"| **{ms['sparse'] / ms['dense']:.3f}** | {ms['masked'] / ms['dense']:.3f} |",
            flush=True,
        )


# --- peak training memory: one fresh process per variant ----------------------------------------------------
def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(variant: str, density: float, steps: int = 3) -> None:
    """Print: RSS after the imports, after building the variant (model, masks, structure), and the peak of training."""
    imports = _rss_mib("VmRSS")
    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(256, 2048), torch.randint(0, 10, (256,))
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters() if p.dim() == 2}
    model, optimizer = _variants(model, masks, (variant,))[variant]  # a deep copy: the original is freed here
    loss_fn = lambda m: F.cross_entropy(m(x), y)  # noqa: E731
    built = _rss_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak mark: what follows is the training's own peak
    for _ in range(steps):
        _step(model, optimizer, loss_fn)()
    print(f"{imports:.1f} {built:.1f} {_rss_mib('VmHWM'):.1f}")


def _memory_env() -> dict:
    """A fixed malloc mmap threshold (64 KiB): freed tensors go back to the OS, so RSS follows live memory
    (glibc's dynamic threshold otherwise keeps freed blocks up to 32 MiB resident)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "65536",
    }


def bench_memory(densities) -> None:
    print("\n### Peak training memory, 3×2048 MLP, batch 256, 3 steps (a fresh process per row; MiB above the imports)\n")
    print("| density | variant | model, masks, structure built | peak while training |")
    print("|---:|---|---:|---:|")
    for density in densities:
        for variant in ("dense", "masked", "sparse"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", variant, str(density)],
                capture_output=True, text=True, check=True, env=_memory_env(),
            ).stdout.split()
            imports, built, peak = (float(v) for v in out[:3])
            print(f"| {density:.1%} | {variant} | {built - imports:.0f} | {peak - imports:.0f} |", flush=True)


# --- inference: a pruned model exported with remove_masks, run sparse again ---------------------------------
def bench_inference(densities, rounds: int) -> None:
    print("\n### Inference latency, 3×2048 MLP exported with `remove_masks` (no_grad forward)\n")
    print("| density | batch | dense (ms) | sparse (ms) | sparse/dense |")
    print("|---:|---:|---:|---:|---:|")
    for density in densities:
        base, masks, _, x = _mlp_case(density)
        apply_masks(base, masks)
        exported = remove_masks(base)  # a plain model, zeros baked in, masks returned
        base.requires_grad_(False).eval()
        sparse = copy.deepcopy(base)
        enable_sparse_execution(sparse, "on", masks=exported)
        for batch in (256, 1):
            inputs = x[:batch]
            with torch.no_grad():
                torch.testing.assert_close(sparse(inputs), base(inputs), rtol=1e-4, atol=1e-4)
                ms = _median_ms({"dense": lambda: base(inputs), "sparse": lambda: sparse(inputs)}, rounds, steps=5)
            print(f"| {density:.1%} | {batch} | {ms['dense']:.3f} | {ms['sparse']:.3f} | **{ms['sparse'] / ms['dense']:.3f}** |", flush=True)


# --- crossover: the largest density at which one layer's training step is faster sparse ---------------------
def bench_crossover(rounds: int) -> None:
    densities = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
    print("\n### Crossover per layer size (one square Linear, batch 256, train step: fwd + bwd + SGD)\n")
    print("| layer | " + " | ".join(f"{d:.0%}" for d in densities) + " | crossover density |")
    print("|---|" + "---:|" * (len(densities) + 1))
    for n in (512, 1024, 2048, 4096):
        layer = nn.Linear(n, n)
        g = torch.Generator().manual_seed(0)
        ratios = []
        for density in densities:
            mask = torch.rand(n, n, generator=g) < density
            timing = time_layer(layer, mask, (256, n), rounds=rounds)
            ratios.append(timing.sparse_ms / timing.dense_ms)
        faster = [d for d, r in zip(densities, ratios) if r < 1]
        cross = f"≈ {max(faster):.0%}" if faster else "< 1%"
        print(f"| {n}×{n} | " + " | ".join(f"{r:.2f}" for r in ratios) + f" | {cross} |", flush=True)


# --- auto: decision time, and never slower than dense by more than it --------------------------------------
def bench_auto(rounds: int, steps: int = 20) -> None:
    print(f"\n### `\"auto\"` on the 3×2048 MLP: decision time, then {steps} training steps\n")
    print("| density | layers sparse | decision (s) | dense, {0} steps (s) | auto, {0} steps (s) | auto + decision − dense (s) |".format(steps))
    print("|---:|---|---:|---:|---:|---:|")
    for density in (0.5, 0.2, 0.05, 0.01):
        base, masks, loss_fn, x = _mlp_case(density)
        dense = copy.deepcopy(base)
        auto = copy.deepcopy(base)
        apply_masks(auto, masks)
        report = enable_sparse_execution(auto, "auto", example_inputs=x)
        dense_opt, auto_opt = _sgd(dense), _sgd(auto)
        apply_masks(dense, masks, optimizers=[dense_opt])
        left_dense = {n: m for n, m in masks.items() if not report.decisions[n]}
        if left_dense:  # as the callback does: the layers left dense keep their masks, on the new optimizer
            apply_masks(auto, left_dense, optimizers=[auto_opt])
        ms = _median_ms({"dense": _step(dense, dense_opt, loss_fn), "auto": _step(auto, auto_opt, loss_fn)}, rounds)
        dense_s, auto_s = ms["dense"] * steps / 1e3, ms["auto"] * steps / 1e3
        layers = ", ".join(f"{n.split('.')[0]}:{'S' if s else 'D'}" for n, s in report.decisions.items())
        print(f"| {density:.1%} | {layers} | {report.decide_s:.2f} | {dense_s:.2f} | {auto_s:.2f} | {auto_s + report.decide_s - dense_s:+.2f} |", flush=True)


# --- convolutions: im2col + CSR against the dense kernel ---------------------------------------------------
def bench_conv(rounds: int) -> None:
    print("\n### Convolution: im2col (`F.unfold`) + CSR against `F.conv2d` (forward only; training adds more)\n")
    print("| layer | input | density | conv2d (ms) | im2col + CSR (ms) | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for c, hw, batch in ((64, 32, 32), (256, 8, 32), (512, 4, 32)):
        conv = nn.Conv2d(c, c, 3, padding=1)
        x = torch.randn(batch, c, hw, hw)
        for density in (0.1, 0.05, 0.01):
            mask = torch.rand(c, c * 9, generator=torch.Generator().manual_seed(0)) < density
            structure = CsrStructure.from_mask(mask)
            values = structure.gather(conv.weight.detach().reshape(c, -1))
            csr = structure.csr(values)

            def sparse_conv():
                cols = F.unfold(x, 3, padding=1)  # [B, c·9, L]
                cols = cols.transpose(0, 1).reshape(c * 9, -1)  # [c·9, B·L]
                out = torch.sparse.mm(csr, cols)  # [c, B·L]
                return out.reshape(c, batch, hw * hw).transpose(0, 1).reshape(batch, c, hw, hw)

            with torch.no_grad():
                dense_w = conv.weight * mask.view_as(conv.weight)
                torch.testing.assert_close(sparse_conv(), F.conv2d(x, dense_w, padding=1), rtol=1e-4, atol=1e-4)
                ms = _median_ms({"dense": lambda: F.conv2d(x, dense_w, padding=1), "sparse": sparse_conv}, rounds)
            print(f"| {c}→{c} 3×3 | {batch}×{c}×{hw}×{hw} | {density:.0%} | {ms['dense']:.2f} | {ms['sparse']:.2f} | {ms['sparse'] / ms['dense']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None)
    parser.add_argument("--densities", default=None, help="comma-separated densities of the step tables")
    parser.add_argument("--memory-child", nargs=2, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child[0], float(args.memory_child[1]))
        return
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
        f"rounds {args.rounds}; load average at start {os.getloadavg()[0]:.2f}"
    )
    densities = tuple(float(d) for d in args.densities.split(",")) if args.densities else MLP_DENSITIES
    sections = {
        "mlp": lambda: bench_steps(_mlp_case, densities, args.rounds, "Training step, 3×2048 MLP + 10-way head, batch 256, layerwise SNIP masks"),
        "block": lambda: bench_steps(_block_case, densities, args.rounds, "Training step, transformer MLP block d=768 → 3072 → 768, 1024 tokens, layerwise magnitude masks"),
        "memory": lambda: bench_memory((0.05, 0.01)),
        "inference": lambda: bench_inference((0.05, 0.01), args.rounds),
        "crossover": lambda: bench_crossover(max(3, args.rounds // 2)),
        "auto": lambda: bench_auto(args.rounds),
        "conv": lambda: bench_conv(args.rounds),
    }
    for name, run in sections.items():
        if args.only in (None, name):
            run()
    print(f"\n# load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
