"""Peak resident memory of pruning at init at scale: a wide MLP of about 105M prunable weights, on CPU.

Each variant runs in a fresh subprocess. After the model (and, where stated, the scores) are built, the
process's peak-RSS mark is reset (``/proc/self/clear_refs`` = 5) and its resident size read as the baseline;
after the measured step the peak (``VmHWM`` in ``/proc/self/status``) is read again. Reported: the extra
peak (peak − baseline, MiB) and its ratio to the extra peak of one forward + backward of the same model.

Variants:

* ``fwd_bwd``: one forward + backward (``loss.backward()``: the ``.grad`` of every parameter is written);
* ``ours_full``: ``connection_sensitivity`` (one batch) + ``select_masks`` (global, sparsity 0.9) +
  ``apply_masks``, the whole pruning step of this package;
* ``ours_select``: the scores already in memory (part of the baseline): ``select_masks`` + ``apply_masks``;
* ``torch_select``: the same scores in memory: ``torch.nn.utils.prune.global_unstructured`` with
  ``importance_scores`` = those scores (``L1Unstructured``, ``amount`` = 0.9).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--width 4096] [--depth 6] [--batch 8]`` (Linux only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

_VARIANTS = ("fwd_bwd", "ours_full", "ours_select", "torch_select")
_SPARSITY = 0.9


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS; return the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def build_mlp(width: int, depth: int, inputs: int = 1024, classes: int = 10) -> nn.Sequential:
    """``inputs → width`` then ``depth`` hidden ``width × width`` layers, ReLU, then ``width → classes``."""
    layers: list[nn.Module] = [nn.Linear(inputs, width), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def run_variant(variant: str, width: int, depth: int, batch: int) -> dict:
    """Measure one variant in this process; returns baseline and peak RSS (MiB) and the step's seconds."""
    from lightning_prune_init import apply_masks, connection_sensitivity, select_masks

    torch.manual_seed(0)
    model = build_mlp(width, depth)
    x = torch.randn(batch, 1024)
    y = torch.randint(0, 10, (batch,))
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    scores = None
    if variant in ("ours_select", "torch_select"):
        scores = connection_sensitivity(model, [(x, y)])
    baseline = _reset_peak()
    start = time.perf_counter()
    kept = None
    if variant == "fwd_bwd":
        F.cross_entropy(model(x), y).backward()
    elif variant == "ours_full":
        scores = connection_sensitivity(model, [(x, y)])
        masks = select_masks(scores, _SPARSITY)
        del scores
        apply_masks(model, masks)
        kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
        del masks
    elif variant == "ours_select":
        masks = select_masks(scores, _SPARSITY)
        apply_masks(model, masks)
        kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
        del masks
    elif variant == "torch_select":
        from torch.nn.utils import prune

        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        names = [f"{i}.weight" for i, m in enumerate(model) if isinstance(m, nn.Linear)]
        prune.global_unstructured(
            [(m, "weight") for m in linears],
            pruning_method=prune.L1Unstructured,
            importance_scores={(m, "weight"): scores[n] for m, n in zip(linears, names)},
            amount=_SPARSITY,
        )
        kept = sum(int(torch.count_nonzero(m.weight_mask)) for m in linears)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {_VARIANTS}")
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {
        "variant": variant,
        "weights": weights,
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "extra_mib": (peak - baseline) / 1024,
        "seconds": seconds,
        "kept": kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variant", choices=_VARIANTS, help="internal: measure one variant in this process")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.width, args.depth, args.batch)))
        return

    results = {}
    for variant in _VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--width", str(args.width), "--depth", str(args.depth),
               "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy()).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    ref = results["fwd_bwd"]["extra_mib"]
    weights = results["fwd_bwd"]["weights"]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"# MLP 1024-{args.width}x{args.depth + 1}-10: {weights:,} prunable weights "
          f"({weights * 4 / 2**20:.0f} MiB float32); batch {args.batch}; sparsity {_SPARSITY}")
    print("| step | baseline RSS (MiB) | peak RSS (MiB) | extra peak (MiB) | × fwd+bwd | seconds | kept |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, r in results.items():
        kept = f"{r['kept']:,}" if r["kept"] is not None else "–"
        print(f"| {variant} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | {r['extra_mib']:.0f} | "
              f"{r['extra_mib'] / ref:.2f} | {r['seconds']:.1f} | {kept} |")


if __name__ == "__main__":
    main()
