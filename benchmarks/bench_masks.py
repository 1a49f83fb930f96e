"""Cost of pruning at init and of keeping the masks: step-time ratios, scoring ratio, mask memory.

Measured side by side in one process, variants interleaved round by round so that machine drift hits them
alike; medians over rounds. Run: ``.venv/bin/python benchmarks/bench_masks.py [--rounds 7] [--device cpu]``.

Rows:
* train step (forward + backward + SGD with momentum 0.9 and weight decay 5e-4), per step:
  dense; pruned with this package (``apply_masks`` with the optimizer attached); pruned with
  ``torch.nn.utils.prune.custom_from_mask`` (weight recomputed as ``weight_orig * weight_mask`` each forward);
* scoring: ``connection_sensitivity`` on one batch vs one forward + backward on the same batch;
* resident mask memory in bytes per masked weight (this package: ``bool``; torch.nn.utils.prune: a mask
  buffer in the weight's dtype).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from lightning_prune_init import apply_masks, connection_sensitivity, select_masks
from lightning_prune_init.masking import _STATE_ATTR
from lightning_prune_init.papers import build_network


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


def bench_network(name, kwargs, shape, batch, sparsity, rounds, steps, device):
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

    scoring_model = copy.deepcopy(base)

    def fwd_bwd():
        scoring_model.zero_grad(set_to_none=True)
        F.cross_entropy(scoring_model(x), y).backward()

    def score():
        connection_sensitivity(scoring_model, [(x, y)])

    timed = {**variants, "fwd_bwd": fwd_bwd, "scoring": score}
    for fn in timed.values():  # warm-up
        fn()
        fn()
    samples = {k: [] for k in timed}
    for _ in range(rounds):
        for key, fn in timed.items():
            samples[key].append(_time(fn, steps, device))
    med = {k: statistics.median(v) for k, v in samples.items()}

    n_weights = sum(m.numel() for m in masks.values())
    ours_bytes = sum(t.numel() * t.element_size() for t in ours.__dict__[_STATE_ATTR].pruned.values())
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
        "ours_ratio": med["ours"] / med["dense"],
        "torch_prune_ratio": med["torch_prune"] / med["dense"],
        "fwd_bwd_ms": med["fwd_bwd"] * 1e3,
        "scoring_ms": med["scoring"] * 1e3,
        "scoring_ratio": med["scoring"] / med["fwd_bwd"],
        "ours_mask_bytes_per_weight": ours_bytes / n_weights,
        "torch_prune_mask_bytes_per_weight": theirs_bytes / n_weights,
        "zeros_after_bench": zeros_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = [
        ("lenet5", {}, (1, 28, 28), 100, 20),
        ("vgg_c", {}, (3, 32, 32), 32 if device.type == "cpu" else 128, 2 if device.type == "cpu" else 20),
    ]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"# device: {device} ({where}); torch {torch.__version__}; sparsity {args.sparsity}; rounds {args.rounds}")
    header = (
        "| network | weights | batch | dense step (ms) | ours (ms) | torch.nn.utils.prune (ms) | ours/dense "
        "| torch_prune/dense | fwd+bwd (ms) | scoring (ms) | scoring/fwd+bwd | mask bytes/weight (ours, torch) |"
    )
    print(header)
    print("|" + "---|" * 13)
    for name, kwargs, shape, batch, steps in cases:
        r = bench_network(name, kwargs, shape, batch, args.sparsity, args.rounds, steps, device)
        assert r["zeros_after_bench"]
        print(
            f"| {r['network']} | {r['weights']:,} | {r['batch']} | {r['dense_ms']:.2f} | {r['ours_ms']:.2f} "
            f"| {r['torch_prune_ms']:.2f} | {r['ours_ratio']:.3f} | {r['torch_prune_ratio']:.3f} "
            f"| {r['fwd_bwd_ms']:.2f} | {r['scoring_ms']:.2f} | {r['scoring_ratio']:.3f} "
            f"| {r['ours_mask_bytes_per_weight']:.2f}, {r['torch_prune_mask_bytes_per_weight']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
