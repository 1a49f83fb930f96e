"""Cost of signal-propagation monitoring: one monitoring call vs one training step, and exact vs estimate.

Run: ``.venv/bin/python benchmarks/bench_spectrum.py [--device cpu] [--threads 1] [--batch 128] [--examples 8]
[--rounds 3]``
(add ``--skip-vgg``, ``--skip-token`` or ``--skip-crossover`` to leave a part out). Prints Markdown tables for
``docs/benchmarks_spectrum.md``.

1. VGG-C on 3x32x32 inputs (the SNIP/SPP CIFAR network, 10.5M weights, batch norm): the median time of one
   training step (forward + backward + SGD with momentum on ``--batch`` examples) against one monitoring call
   with ``method="estimate"`` on ``--examples`` probe examples, per scope (``weights``, ``layerwise``,
   ``end_to_end``) and in total, with the default estimator settings. Steps and calls alternate round by round
   so that machine drift hits both alike.
2. A token model: a small BERT classifier (2 layers, hidden 128, 32 tokens, vocabulary 1000) on dict batches, the
   same comparison: one training step (AdamW on ``--batch`` sequences, the model's own loss) against one monitoring
   call per scope on ``--examples`` sequences (the end-to-end Jacobian from the embedding output).
3. Crossover: the layerwise Jacobian of a ``Linear(n, n) -> tanh`` layer (an ``n x n`` matrix per example,
   PyTorch's default init, inputs ``N(0, 1)``),
   ``method="exact"`` (``vmap(jacrev)`` + ``svdvals``) against ``method="estimate"``, for growing ``n``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.models import build_network
from lightning_prune_init.spectrum import SCOPES, jacobian_singular_values


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _race(step: Callable[[], None], calls: dict[str, Callable[[], Any]], device: torch.device, rounds: int,
          batch: int, examples: int) -> list[dict]:
    """Median time of ``step`` and of each call, alternated round by round, after one warm-up of each."""
    step()
    step()
    for fn in calls.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {"step": [], **{s: [] for s in calls}}
    for _ in range(rounds):
        samples["step"].append(_timed(step, device))
        for s, fn in calls.items():
            samples[s].append(_timed(fn, device))
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [{"what": f"training step (batch {batch})", "ms": med["step"] * 1e3, "ratio": 1.0}]
    for s in calls:
        what = f"monitor `{s}`, estimate, {examples} examples"
        rows.append({"what": what, "ms": med[s] * 1e3, "ratio": med[s] / med["step"]})
    total = sum(med[s] for s in calls)
    rows.append({"what": "monitor, all three scopes", "ms": total * 1e3, "ratio": total / med["step"]})
    methods = {s: sorted({r.method for r in calls[s]().values()}) for s in calls}
    rows.append({"what": f"methods used: {methods}", "ms": float("nan"), "ratio": float("nan")})
    return rows


def bench_vgg(device: torch.device, batch: int, examples: int, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_network("vgg-c").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    probe = torch.randn(examples, 3, 32, 32, device=device)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    calls = {s: (lambda s=s: jacobian_singular_values(model, probe, scope=s, method="estimate")) for s in SCOPES}
    return _race(step, calls, device, rounds, batch, examples)


def bench_token(device: torch.device, batch: int, examples: int, rounds: int) -> list[dict]:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
        max_position_embeddings=64, num_labels=2,
    )
    model = BertForSequenceClassification(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    data = {
        "input_ids": torch.randint(0, 1000, (batch, 32), generator=g),
        "attention_mask": torch.ones(batch, 32, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }
    data = {k: v.to(device) for k, v in data.items()}
    probe = {k: v[:examples] for k, v in data.items()}

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        model(**data).loss.backward()
        optimizer.step()

    calls = {s: (lambda s=s: jacobian_singular_values(model, probe, scope=s, method="estimate")) for s in SCOPES}
    return _race(step, calls, device, rounds, batch, examples)


def bench_crossover(device: torch.device, sizes: list[int], examples: int, rounds: int) -> list[dict]:
    rows = []
    for n in sizes:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(n, n), nn.Tanh(), nn.Linear(n, 10)).to(device)
        x = torch.randn(examples, n, device=device)
        exact = lambda: jacobian_singular_values(model, x, layers="0", method="exact")  # noqa: E731
        estimate = lambda: jacobian_singular_values(model, x, layers="0", method="estimate")  # noqa: E731
        exact()
        estimate()
        t_exact, t_est = [], []
        for _ in range(rounds):
            t_exact.append(_timed(exact, device))
            t_est.append(_timed(estimate, device))
        e, s = exact()["0"], estimate()["0"]
        rows.append(
            {
                "n": n,
                "exact_ms": statistics.median(t_exact) * 1e3,
                "estimate_ms": statistics.median(t_est) * 1e3,
                "ratio": statistics.median(t_est) / statistics.median(t_exact),
                "max_err": abs(s.max - e.max) / e.max,
                "mean_sq_err": abs(s.mean_sq - e.mean_sq) / e.mean_sq,
                "mean_err": abs(s.mean - e.mean) / e.mean,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--skip-token", action="store_true")
    parser.add_argument("--skip-crossover", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    if not args.skip_vgg:
        print("\n| VGG-C, 3x32x32 | ms | x training step |\n|---|---:|---:|")
        for r in bench_vgg(device, args.batch, args.examples, args.rounds):
            print(f"| {r['what']} | {r['ms']:.0f} | {r['ratio']:.2f} |")
    if not args.skip_token:
        print("\n| BERT (2 x 128), 32 tokens, dict batches | ms | x training step |\n|---|---:|---:|")
        for r in bench_token(device, args.batch, args.examples, args.rounds):
            print(f"| {r['what']} | {r['ms']:.0f} | {r['ratio']:.2f} |")
    if not args.skip_crossover:
        print(
            f"\n| n (Jacobian n x n, {args.examples} examples) | exact ms | estimate ms | estimate / exact "
            "| max rel. err | mean_sq rel. err | mean rel. err |\n|---:|---:|---:|---:|---:|---:|---:|"
        )
        for r in bench_crossover(device, args.sizes, args.examples, args.rounds):
            print(
                f"| {r['n']} | {r['exact_ms']:.0f} | {r['estimate_ms']:.0f} | {r['ratio']:.2f} | "
                f"{r['max_err']:.4f} | {r['mean_sq_err']:.4f} | {r['mean_err']:.4f} |"
            )


if __name__ == "__main__":
    main()
