"""Benchmark of the approximate isometry repair (METHOD.md §3), run by hand; results in docs/benchmarks_isometry.md.

For each network (orthogonal init, SNIP to 90% sparsity by hand: global top-k of |grad·w| on one batch of
random inputs with cross-entropy), side by side in one process:

1. ``loop``: a plain per-layer loop of the faithful SGD (autograd, ``torch.optim.SGD``, lr 0.1, the literal
   ``‖(C⊙W)(C⊙W)ᵀ − I‖_F`` with the ``c_out x c_out`` Gram), 10,000 steps;
2. ``sgd``: ``approximate_isometry`` defaults (the same SGD, same-shape layers batched), 10,000 steps;
3. ``cg``: ``approximate_isometry(solver="cg")`` run to convergence;
4. ``cg → faithful``: the smallest ``steps`` cap (1, 2, 4, ...) at which ``solver="cg"`` reaches a total
   error at most the faithful 10,000-step total, and its time.

Usage::

    .venv/bin/python benchmarks/bench_isometry.py    # MLP-7 and a 1/4-width VGG-11 with BN, 1 torch thread
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.init import init_model_
from lightning_prune_init.isometry import approximate_isometry, orthogonality_error


def mlp7() -> nn.Module:
    """Linear MLP-7 of SPP: 784 -> 100 (x6) -> 10, no nonlinearity."""
    hidden = [nn.Linear(100, 100) for _ in range(5)]
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), *hidden, nn.Linear(100, 10))


def vgg11(width: int = 16) -> nn.Module:
    """VGG-11 layout with BN for 32x32 inputs, channels (w, 2w, 4w, 4w, 8w, 8w, 8w, 8w), 3 linear layers."""
    cfg = [width, "M", 2 * width, "M", 4 * width, 4 * width, "M", 8 * width, 8 * width, "M", 8 * width, 8 * width, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    head = [nn.Flatten(), nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU(), nn.Linear(c, 10)]
    return nn.Sequential(*layers, *head)


def snip_masks(model: nn.Module, input_shape: tuple[int, ...], sparsity: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((64, *input_shape), generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    model.eval()
    F.cross_entropy(model(x), y).backward()
    scores = torch.cat([(p.grad * p).abs().flatten() for p in weights.values()])
    keep = round(scores.numel() * (1 - sparsity))
    flat = torch.zeros_like(scores, dtype=torch.bool)
    flat[torch.topk(scores, keep).indices] = True
    model.zero_grad(set_to_none=True)
    masks, offset = {}, 0
    with torch.no_grad():
        for name, p in weights.items():
            masks[name] = flat[offset : offset + p.numel()].view_as(p).clone()
            p.mul_(masks[name])
            offset += p.numel()
    return masks


def plain_loop(model: nn.Module, masks: dict, steps: int, lr: float = 0.1) -> tuple[float, dict[str, float]]:
    """The straightforward implementation: one layer after the other, autograd and torch.optim.SGD."""
    start = time.perf_counter()
    errors = {}
    for name, mask in masks.items():
        p = model.get_parameter(name)
        w = p.detach().clone().requires_grad_(True)
        c = mask.to(w.dtype)
        optimizer = torch.optim.SGD([w], lr=lr)
        eye = torch.eye(w.shape[0], dtype=w.dtype)
        for _ in range(steps):
            optimizer.zero_grad()
            a = (w * c).reshape(w.shape[0], -1)
            loss = torch.linalg.matrix_norm(a @ a.T - eye)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            p.copy_(w * c)
    elapsed = time.perf_counter() - start
    for name, mask in masks.items():
        errors[name] = float(orthogonality_error(model.get_parameter(name), mask))
    return elapsed, errors


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench(name: str, make, input_shape, steps: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    model = make()
    init_model_(model, "orthogonal", zero_biases=True, generator=torch.Generator().manual_seed(0))
    masks = snip_masks(model, input_shape, 0.9)
    n_weights = sum(m.numel() for m in masks.values())
    print(f"\n## {name}: {len(masks)} conv/linear weights, {n_weights:,} weights, 90% pruned", flush=True)

    rows = []
    loop_time, loop_errors = plain_loop(copy.deepcopy(model), masks, steps)
    faithful = approximate_isometry(copy.deepcopy(model), masks=masks, steps=steps, progress=False)
    print(faithful, flush=True)

    cg_time, cg = timed(
        lambda: approximate_isometry(copy.deepcopy(model), masks=masks, solver="cg", progress=False), repeats
    )
    print(cg, flush=True)

    before = faithful.error_before
    best = faithful.best_possible
    rows.append(
        f"| {name} | plain per-layer loop, SGD lr 0.1 | {steps:,} | {loop_time:.2f} | {sum(loop_errors.values()):.4f} |"
    )
    rows.append(
        f"| {name} | `approximate_isometry()` (faithful SGD, batched) | {steps:,} | {faithful.time_s:.2f} | "
        f"{faithful.error_after:.4f} |"
    )
    max_cg_steps = max(x.steps for x in cg.layers.values())
    rows.append(
        f"| {name} | `solver=\"cg\"` to convergence | ≤ {max_cg_steps} | {cg_time:.2f} | {cg.error_after:.4f} |"
    )

    cap = 1  # time for cg to reach the faithful objective
    while True:
        report = approximate_isometry(copy.deepcopy(model), masks=masks, solver="cg", steps=cap, progress=False)
        if report.error_after <= faithful.error_after or cap >= steps:
            break
        cap *= 2
    reach_time, report = timed(
        lambda: approximate_isometry(copy.deepcopy(model), masks=masks, solver="cg", steps=cap, progress=False),
        repeats,
    )
    rows.append(
        f"| {name} | `solver=\"cg\", steps={cap}` (first power of 2 at or below the faithful total) | {cap} | "
        f"{reach_time:.2f} | {report.error_after:.4f} |"
    )
    worse = {n: x.error_after - faithful.layers[n].error_after for n, x in cg.layers.items()}
    rows.append(
        f"| {name} | (error before {before:.4f}; best possible {best:.4f}; converged cg above faithful sgd "
        f"(by > 1e-6) in {sum(v > 1e-6 for v in worse.values())} of {len(worse)} layers; largest per-layer "
        f"cg − sgd: {max(worse.values()):+.1e}) | | | |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--vgg-width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the cg timings (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, float32"
    )
    rows = ["| net | method | steps | time (s) | Σ error after |", "|---|---|---:|---:|---:|"]
    rows += bench("MLP-7", mlp7, (1, 28, 28), args.steps, args.repeats)
    vgg_name = f"VGG-11/{64 // args.vgg_width} + BN"
    rows += bench(vgg_name, lambda: vgg11(args.vgg_width), (3, 32, 32), args.steps, args.repeats)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
