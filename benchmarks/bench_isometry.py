"""Benchmark of the approximate isometry repair, run by hand; results in docs/benchmarks_isometry.md.

Small networks (``--nets``; orthogonal init, SNIP to 90% sparsity by hand: global top-k of |grad·w| on one
batch of random inputs with cross-entropy), side by side in one process:

1. ``loop``: a plain per-layer loop of the authors' SGD (autograd, ``torch.optim.SGD``, lr 0.1, the literal
   ``‖(C⊙W)(C⊙W)ᵀ − I‖_F`` with the ``c_out x c_out`` Gram), 10,000 steps;
2. ``sgd``: ``approximate_isometry(solver="sgd")`` (the same SGD, same-size matrices batched), 10,000 steps;
3. ``cg``: ``approximate_isometry()`` defaults (conjugate gradient);
4. ``cg → faithful``: the smallest ``steps`` cap (1, 2, 4, ...) at which ``"cg"`` reaches a total error at most
   the faithful 10,000-step total, and its time.

torchvision resnet18 (``--resnet18``; ``weights=None``, its own init, 1000 classes, 90% SNIP by hand, 2 threads
in the docs): the defaults, as ``isometry=True`` runs them, timed (wall and CPU seconds) next to a few steps of
the authors' SGD (per-step time, side by side under the same load), and against the objective of their full
10,000-step SGD, which takes hours on 2 shared cores and is run once apart (``--resnet18-sgd LOG``, under
``nice``) and read back from its log (``--sgd-log LOG``).

Usage::

    .venv/bin/python benchmarks/bench_isometry.py                        # MLP-7 and VGG-11/4 + BN, 1 thread
    nice -n 19 .venv/bin/python benchmarks/bench_isometry.py --threads 2 --resnet18-sgd sgd.jsonl   # hours
    .venv/bin/python benchmarks/bench_isometry.py --threads 2 --resnet18 --sgd-log sgd.jsonl
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.init import init_model_
from lightning_prune_init.isometry import approximate_isometry, orthogonality_error
from lightning_prune_init.parameters import select_parameters


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


def snip_masks(
    model: nn.Module, input_shape: tuple[int, ...], sparsity: float, seed: int = 0, batch: int = 64, classes: int = 10
) -> dict:
    """SNIP by hand: global top-k of ``|grad · w|`` over the conv/linear weights, one batch of ``batch`` seeded random
    inputs and labels, cross-entropy, BN in eval mode. The masks are applied to the weights."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_shape), generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
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


def resnet18_pruned(sparsity: float = 0.9, seed: int = 0) -> tuple[nn.Module, dict]:
    """torchvision resnet18 (``weights=None``: its own init, 1000 classes) pruned to ``sparsity`` by :func:`snip_masks`
    on one batch of 16 seeded random 224x224 images with random labels."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    return model, snip_masks(model, (3, 224, 224), sparsity, seed, batch=16, classes=1000)


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
    faithful = approximate_isometry(copy.deepcopy(model), masks=masks, solver="sgd", steps=steps, progress=False)
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
        f"| {name} | `approximate_isometry(solver=\"sgd\")` (faithful, batched) | {steps:,} | {faithful.time_s:.2f} | "
        f"{faithful.error_after:.4f} |"
    )
    max_cg_steps = max(x.steps for x in cg.layers.values())
    rows.append(
        f"| {name} | `approximate_isometry()` (cg, the default) | ≤ {max_cg_steps} | {cg_time:.2f} | {cg.error_after:.4f} |"
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


#: The weights of resnet18 in the groups the authors' SGD is run in (cheapest first: the SGD of each weight
#: depends on that weight alone, so groups run apart give the errors of one run of all).
RESNET18_GROUPS = {"conv1, layer1, layer2, fc": ("conv1.*", "layer1.*", "layer2.*", "fc.*"),
                   "layer3": ("layer3.*",), "layer4": ("layer4.*",)}


def resnet18_sgd(log_path: str, steps: int = 10_000, chunk: int = 250) -> None:
    """The authors' SGD on the pruned resnet18, ``steps`` steps, group by group (:data:`RESNET18_GROUPS`) in chunks
    (plain SGD has no state, so the chunks add up to one run exactly), one JSON line per chunk: the group's errors,
    wall and CPU seconds, load; per weight at the end."""
    model, masks = resnet18_pruned()
    with open(log_path, "a") as log:
        for group, patterns in RESNET18_GROUPS.items():
            wall = cpu = 0.0
            selection = select_parameters(model, include=list(patterns))
            for done in range(chunk, steps + chunk, chunk):
                w0, c0 = time.perf_counter(), time.process_time()
                report = approximate_isometry(model, parameters=selection, masks=masks, solver="sgd", steps=chunk,
                                              progress=False)
                wall, cpu = wall + time.perf_counter() - w0, cpu + time.process_time() - c0
                row = {"group": group, "steps": done, "error_before": report.error_before,
                       "error_after": report.error_after, "best_possible": report.best_possible, "wall_s": wall,
                       "cpu_s": cpu, "load": os.getloadavg(), "threads": torch.get_num_threads()}
                if done >= steps:
                    row["layers"] = {n: x.error_after for n, x in report.layers.items()}
                log.write(json.dumps(row) + "\n")
                log.flush()


def read_sgd_log(path: str) -> dict[str, dict]:
    """The last line of each group of a :func:`resnet18_sgd` log."""
    last: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            if "group" in entry:
                last[entry["group"]] = entry
    return last


def resnet18_rows(sgd_log: str | None, probe_steps: int) -> list[str]:
    """The defaults (``isometry=True``) on the pruned resnet18 next to the authors' SGD."""
    model, masks = resnet18_pruned()
    load = os.getloadavg()
    w0, c0 = time.perf_counter(), time.process_time()
    cg = approximate_isometry(copy.deepcopy(model), masks=masks, progress=False)
    cg_wall, cg_cpu = time.perf_counter() - w0, time.process_time() - c0
    print(cg, flush=True)
    w0, c0 = time.perf_counter(), time.process_time()
    approximate_isometry(copy.deepcopy(model), masks=masks, solver="sgd", steps=probe_steps, progress=False)
    sgd_wall, sgd_cpu = (time.perf_counter() - w0) / probe_steps, (time.process_time() - c0) / probe_steps
    load = tuple((a + b) / 2 for a, b in zip(load, os.getloadavg()))
    rows = [
        f"| resnet18 | `approximate_isometry()` (cg, the default; `isometry=True`) | ≤ {max(x.steps for x in cg.layers.values())} "
        f"| {cg_wall:.1f} | {cg_cpu:.1f} | {cg.error_after:.4f} |",
        f"| resnet18 | `solver=\"sgd\"`: {probe_steps} steps timed in the same run, × 10,000 / {probe_steps} | 10,000 "
        f"| {sgd_wall * 10_000:.0f} | {sgd_cpu * 10_000:.0f} | |",
    ]
    groups = read_sgd_log(sgd_log) if sgd_log else {}
    done = {g: e for g, e in groups.items() if "layers" in e}
    for group, e in groups.items():
        names = [n for n in cg.layers if any(fnmatch.fnmatchcase(n, p) for p in RESNET18_GROUPS[group])]
        mine = sum(cg.layers[n].error_after for n in names)
        rows.append(f"| resnet18 {group} | `solver=\"sgd\"` (the authors'), run apart under `nice -n 19` | "
                    f"{e['steps']:,} | {e['wall_s']:.0f} | {e['cpu_s']:.0f} | {e['error_after']:.4f} (cg: {mine:.4f}) |")
    if len(done) == len(RESNET18_GROUPS):
        total = sum(e["error_after"] for e in done.values())
        rows.append(f"| resnet18 | `solver=\"sgd\"` (the authors'), all groups | 10,000 | | | {total:.4f} |")
    sgd_layers = {n: v for e in done.values() for n, v in e["layers"].items()}
    print("\n| resnet18 layer | matrices | density | before | authors' sgd | cg (default) | best |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, x in cg.layers.items():
        sgd = f"{sgd_layers[name]:.4f}" if name in sgd_layers else ""
        print(f"| {name} | {x.matrices} | {x.density:.2%} | {x.error_before:.4f} | {sgd} | {x.error_after:.4f} "
              f"| {x.best_possible:.4f}{'' if x.reachable else '*'} |")
    rows.append(f"| resnet18 | (error before {cg.error_before:.4f}; best possible {cg.best_possible:.4f}; load "
                f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}) | | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--vgg-width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the cg timings (median)")
    parser.add_argument("--resnet18", action="store_true", help="the resnet18 rows instead of MLP-7 and VGG")
    parser.add_argument("--sgd-log", help="the log of --resnet18-sgd to read the authors' objective from")
    parser.add_argument("--probe-steps", type=int, default=20, help="SGD steps timed next to cg on resnet18")
    parser.add_argument("--resnet18-sgd", metavar="LOG", help="run the authors' 10,000-step SGD on resnet18, logging")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, float32, load {os.getloadavg()}"
    )
    if args.resnet18_sgd:
        resnet18_sgd(args.resnet18_sgd, args.steps)
        return
    if args.resnet18:
        rows = ["| net | method | steps | time (s) | CPU time (s) | Σ error after |", "|---|---|---:|---:|---:|---:|"]
        rows += resnet18_rows(args.sgd_log, args.probe_steps)
    else:
        rows = ["| net | method | steps | time (s) | Σ error after |", "|---|---|---:|---:|---:|"]
        rows += bench("MLP-7", mlp7, (1, 28, 28), args.steps, args.repeats)
        vgg_name = f"VGG-11/{64 // args.vgg_width} + BN"
        rows += bench(vgg_name, lambda: vgg11(args.vgg_width), (3, 32, 32), args.steps, args.repeats)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
