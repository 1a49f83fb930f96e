"""Cost of pruning at init and of keeping the masks: step-time ratios, scoring ratio, mask memory.

Measured side by side in one process, variants interleaved round by round (the order rotated each round) so
that machine drift hits them alike; times are medians over rounds, ratios are medians of the per-round ratios. Run: ``.venv/bin/python benchmarks/bench_masks.py [--rounds 7] [--device cpu]
[--baseline-masking OLD_MASKING_PY]``.

Rows:
* train step (forward + backward + SGD with momentum 0.9 and weight decay 5e-4), per step:
  dense; pruned with this package (``apply_masks`` with the optimizer attached); pruned with
  ``torch.nn.utils.prune.custom_from_mask`` (weight recomputed as ``weight_orig * weight_mask`` each forward);
  with ``--baseline-masking``, pruned with an earlier version of the mask code (a ``masking.py`` file, e.g.
  ``git show 7594f5b:lightning_prune_init/masking.py > /tmp/masking_before.py``), to compare the hooks;
* forced pass: one ``enforce_masks_`` (every masked weight and its optimizer state, as after ``.data`` writes,
  at a checkpoint or at the first forward after ``mark_masks_stale``) vs one train step of the pruned model;
* scoring: ``connection_sensitivity`` on one batch vs one forward + backward on the same batch;
* resident mask memory in bytes per masked weight (this package: ``bool``; torch.nn.utils.prune: a mask
  buffer in the weight's dtype).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from lightning_prune_init import apply_masks, connection_sensitivity, select_masks
from lightning_prune_init.masks import enforce_masks_, get_masks
from lightning_prune_init.models import build_network


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model, optimizer, x, y):
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _time(fn, steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


def load_baseline(path: str):
    """An earlier version of the mask code, imported from a single file (it must define ``apply_masks``)."""
    spec = importlib.util.spec_from_file_location("masking_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def bench_network(name, kwargs, shape, batch, sparsity, rounds, steps, device, baseline=None):
    torch.manual_seed(0)
    base = build_network(name, **kwargs).to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    masks = select_masks(connection_sensitivity(base, [(x, y)]), sparsity)

    dense = copy.deepcopy(base).train()
    ours = copy.deepcopy(base).train()
    theirs = copy.deepcopy(base).train()
    opt_dense = _sgd(dense.parameters())
    opt_ours = _sgd(ours.parameters())
    apply_masks(ours, masks, optimizers=[opt_ours])
    for pname, mask in masks.items():
        module_name, _, attr = pname.rpartition(".")
        prune.custom_from_mask(theirs.get_submodule(module_name), attr, mask)
    opt_theirs = _sgd(theirs.parameters())
    variants = {
        "dense": _step_fn(dense, opt_dense, x, y),
        "ours": _step_fn(ours, opt_ours, x, y),
        "torch_prune": _step_fn(theirs, opt_theirs, x, y),
    }
    if baseline is not None:
        before = copy.deepcopy(base).train()
        opt_before = _sgd(before.parameters())
        baseline.apply_masks(before, masks, optimizers=[opt_before])
        variants["before"] = _step_fn(before, opt_before, x, y)

    scoring_model = copy.deepcopy(base)

    def fwd_bwd():
        scoring_model.zero_grad(set_to_none=True)
        F.cross_entropy(scoring_model(x), y).backward()

    def score():
        connection_sensitivity(scoring_model, [(x, y)])

    def forced():
        enforce_masks_(ours)

    timed = {**variants, "forced": forced, "fwd_bwd": fwd_bwd, "scoring": score}
    for fn in timed.values():  # warm-up
        fn()
        fn()
    samples = {k: [] for k in timed}
    keys = list(timed)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotated each round: no fixed neighbour
            samples[key].append(_time(timed[key], steps, device))
    med = {k: statistics.median(v) for k, v in samples.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of the per-round ratio (variants of one round ran seconds apart)."""
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    n_weights = sum(m.numel() for m in masks.values())
    ours_bytes = sum(t.numel() * t.element_size() for t in get_masks(ours).values())
    theirs_bytes = sum(
        b.numel() * b.element_size() for n, b in theirs.named_buffers() if n.endswith("_mask")
    )
    zeros_ok = all(torch.count_nonzero(ours.get_parameter(n)[~m]) == 0 for n, m in masks.items())
    return {
        "network": f"{name} {kwargs or ''}".strip(),
        "weights": n_weights,
        "batch": batch,
        "dense_ms": med["dense"] * 1e3,
        "ours_ms": med["ours"] * 1e3,
        "torch_prune_ms": med["torch_prune"] * 1e3,
        "ours_ratio": ratio("ours", "dense"),
        "before_ratio": ratio("before", "dense") if "before" in med else float("nan"),
        "forced_ms": med["forced"] * 1e3,
        "forced_ratio": ratio("forced", "ours"),
        "torch_prune_ratio": ratio("torch_prune", "dense"),
        "fwd_bwd_ms": med["fwd_bwd"] * 1e3,
        "scoring_ms": med["scoring"] * 1e3,
        "scoring_ratio": ratio("scoring", "fwd_bwd"),
        "ours_mask_bytes_per_weight": ours_bytes / n_weights,
        "torch_prune_mask_bytes_per_weight": theirs_bytes / n_weights,
        "zeros_after_bench": zeros_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--baseline-masking", default=None, help="an earlier masking.py to compare step times with")
    parser.add_argument("--networks", default="lenet300,lenet5,vgg_c", help="comma-separated: lenet300 (batch 1), lenet5, vgg_c")
    parser.add_argument("--steps", type=int, default=None, help="steps per variant and round (default: per network)")
    args = parser.parse_args()
    device = torch.device(args.device)
    baseline = load_baseline(args.baseline_masking) if args.baseline_masking else None
    cases = [
        ("lenet300", {}, (1, 28, 28), 1, 200),  # batch 1: the hooks' Python overhead is as visible as it gets
        ("lenet5", {}, (1, 28, 28), 100, 20),
        ("vgg_c", {}, (3, 32, 32), 32 if device.type == "cpu" else 128, 2 if device.type == "cpu" else 20),
    ]
    cases = [(*c[:4], args.steps or c[4]) for c in cases if c[0] in args.networks.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# device: {device} ({where}); torch {torch.__version__}; sparsity {args.sparsity}; rounds {args.rounds}; "
        f"load average at start {load:.2f}"
    )
    header = (
        "| network | weights | batch | dense step (ms) | ours (ms) | torch.nn.utils.prune (ms) | ours/dense "
        "| before/dense | torch_prune/dense | forced pass (ms) | forced pass/step | fwd+bwd (ms) | scoring (ms) "
        "| scoring/fwd+bwd | mask bytes/weight (ours, torch) |"
    )
    print(header)
    print("|" + "---|" * 15)
    for name, kwargs, shape, batch, steps in cases:
        r = bench_network(name, kwargs, shape, batch, args.sparsity, args.rounds, steps, device, baseline)
        assert r["zeros_after_bench"]
        print(
            f"| {r['network']} | {r['weights']:,} | {r['batch']} | {r['dense_ms']:.2f} | {r['ours_ms']:.2f} "
            f"| {r['torch_prune_ms']:.2f} | {r['ours_ratio']:.3f} | {r['before_ratio']:.3f} "
            f"| {r['torch_prune_ratio']:.3f} | {r['forced_ms']:.2f} | {r['forced_ratio']:.3f} "
            f"| {r['fwd_bwd_ms']:.2f} | {r['scoring_ms']:.2f} | {r['scoring_ratio']:.3f} "
            f"| {r['ours_mask_bytes_per_weight']:.2f}, {r['torch_prune_mask_bytes_per_weight']:.2f} |",
            flush=True,
        )
    if hasattr(os, "getloadavg"):
        print(f"# load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
