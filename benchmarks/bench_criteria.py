"""Scoring time of each pruning-at-init criterion relative to one forward + backward on the same batch.

Measured side by side in one process: every criterion and the baseline are timed once per round, in an
interleaved order, so that machine drift hits them alike; medians over rounds. Each criterion is timed with
the registry's function alone (scores, no final selection); the iterative criteria select a mask in every
round, so for them the selections are part of the scoring. One more column times ``select_masks`` on SNIP's
(float32) scores: the final selection the callback adds to every criterion (float64 scores take 4 radix
passes instead of 2).
Run: ``.venv/bin/python benchmarks/bench_criteria.py [--rounds 5] [--device cpu] [--threads 1] [--sparsity 0.9]``.
Reported: ratio of medians and ratio of minimums (the least disturbed run) over rounds.

Baseline: ``zero_grad`` + forward + cross-entropy + ``backward`` on the scoring batch, model in train mode.
Criteria: ``snip``, ``grasp`` (one batch each; GraSP does 3 backward passes, one of them double), ``synflow``
(100 rounds, float64, data-free: batch of one all-ones input), ``iterative_snip`` (10 rounds, one batch),
``magnitude``, ``random``.

Token models (``--networks gpt2,llama,bert``): the tiny configs of ``tests/zoo.py`` (2 layers, width 32, vocab
64) on one dict batch of 4 x 8 token ids; baseline ``model(**batch).loss.backward()``; the criteria use the
default loss of dict batches (the model's own ``.loss``), GraSP runs attention through the math SDPA kernel, and
SynFlow's probe replaces the embedding output by ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lightning_prune_init.models import build_network
from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.scoring import CRITERIA, ScoringContext, connection_sensitivity
from lightning_prune_init.selection import select_masks

OPTIONS = {"synflow": {"rounds": 100}, "iterative_snip": {"rounds": 10}, "grasp": {"temperature": 200.0}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


TOKEN_MODELS = ("gpt2", "llama", "bert")


def _image_case(name, kwargs, shape, batch, device):
    torch.manual_seed(0)
    model = build_network(name, **kwargs).to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return model, [(x, y)], fwd_bwd


def _token_case(name, device):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests import zoo

    build = {"gpt2": zoo.tiny_gpt2, "llama": zoo.tiny_llama, "bert": zoo.tiny_bert_classifier}[name]
    model = build().to(device)
    batch = {k: v.to(device) for k, v in zoo.token_batch(labels="cls" if name == "bert" else "lm").items()}

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    return model, [batch], fwd_bwd


def bench_network(name, kwargs, shape, batch, sparsity, rounds, device) -> dict:
    if name in TOKEN_MODELS:
        model, batches, fwd_bwd = _token_case(name, device)
    else:
        model, batches, fwd_bwd = _image_case(name, kwargs, shape, batch, device)
    selection = select_parameters(model)

    def scorer(criterion):
        context = ScoringContext(sparsity=sparsity, generator=torch.Generator().manual_seed(0),
                                 options=OPTIONS.get(criterion, {}))

        def run():
            CRITERIA[criterion](model, batches, selection, context)

        return run

    snip_scores = connection_sensitivity(model, batches)

    def select():
        select_masks(snip_scores, sparsity, on_layer_collapse="ignore")

    variants = {"fwd_bwd": fwd_bwd, **{c: scorer(c) for c in CRITERIA}, "select_masks": select}
    for fn in variants.values():  # warm-up
        fn()
    model.zero_grad(set_to_none=True)
    samples = {k: [] for k in variants}
    order = list(variants)
    for r in range(rounds):
        for key in order[r % len(order) :] + order[: r % len(order)]:  # rotate the order each round
            samples[key].append(_timed(variants[key], device))
            model.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    low = {k: min(v) for k, v in samples.items()}
    weights = selection.numel
    batch = len(next(iter(batches[0].values())) if isinstance(batches[0], dict) else batches[0][0])
    return {"network": name, "weights": weights, "batch": batch, "ms": {k: v * 1e3 for k, v in med.items()},
            "ratio": {k: med[k] / med["fwd_bwd"] for k in med}, "min_ratio": {k: low[k] / low["fwd_bwd"] for k in low}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--networks", default="lenet300,lenet5,resnet20")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less sensitive to other load)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cases = {
        "lenet300": ({}, (1, 28, 28), 100),
        "lenet5": ({}, (1, 28, 28), 100),
        "resnet20": ({}, (3, 32, 32), 128),
        "vgg_c": ({}, (3, 32, 32), 128),
        **{name: ({}, None, None) for name in TOKEN_MODELS},
    }
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    print(f"# device: {device} ({where}); torch {torch.__version__}; sparsity {args.sparsity}; rounds {args.rounds}")
    names = [*CRITERIA, "select_masks"]
    print("Cells: ratio of medians [ratio of minimums] (median ms)")
    print("| network | weights | batch | fwd+bwd (ms) | " + " | ".join(names) + " |")
    print("|" + "---|" * (4 + len(names)))
    for name in args.networks.split(","):
        kwargs, shape, batch = cases[name]
        r = bench_network(name, kwargs, shape, batch, args.sparsity, args.rounds, device)
        cells = " | ".join(f"{r['ratio'][c]:.2f} [{r['min_ratio'][c]:.2f}] ({r['ms'][c]:.1f} ms)" for c in names)
        print(f"| {r['network']} | {r['weights']:,} | {r['batch']} | {r['ms']['fwd_bwd']:.1f} | {cells} |", flush=True)
    print(f"# load average after {os.getloadavg()[0]:.2f}" if device.type == "cpu" else "")


if __name__ == "__main__":
    main()
