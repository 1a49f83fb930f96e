"""Iterative SNIP (de Jorge et al. 2021, "Progressive skeletonization"): the ``"iterative_snip"`` criterion.

Round ``k`` computes the connection sensitivity (unnormalized, signed sums over the batches and over ranks by
``reduce_fn`` before the absolute value) of the network with the entries pruned so far set to zero, and keeps the
top ``d^(k/n)`` of the entries still alive (:mod:`~lightning_prune_init.scoring.rounds`). Pruned weights stay zero
for all later rounds (their score ``|g·0|`` is 0), so, unlike FORCE, nothing pruned comes back. Round 1 is plain
SNIP, so ``rounds=1`` gives SNIP's mask.

>>> import torch
>>> from lightning_prune_init.parameters import select_parameters
>>> from lightning_prune_init.selection import select_masks
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
>>> batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
>>> ctx = ScoringContext(sparsity=0.7, options={"rounds": 3})
>>> scores = iterative_snip(net, [batch], select_parameters(net), ctx)
>>> sum(int(m.sum()) for m in select_masks(scores, 0.7, on_layer_collapse="ignore").values())  # 30% of 42
13
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_int
from lightning_prune_init.parameters import ParameterSelection
from lightning_prune_init.scoring.context import ScoringContext
from lightning_prune_init.scoring.guards import check_can_score
from lightning_prune_init.scoring.registry import check_criterion_options, register_criterion
from lightning_prune_init.scoring.rounds import iterate_rounds
from lightning_prune_init.scoring.snip import batch_list, sensitivity

__all__ = ["iterative_snip"]


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    check_int("rounds", options["rounds"], minimum=1)
    return options


@register_criterion("iterative_snip", iterative=True, options={"rounds": 10}, check_options=_check_options)
def iterative_snip(
    model: nn.Module, batches: Iterable[Any] | Tensor, parameters: ParameterSelection, context: ScoringContext
) -> dict[str, Tensor]:
    """SNIP in ``rounds`` rounds (option, default 10: each round costs one forward+backward per batch).

    The pruned entries are zeroed in place during the rounds (so the loss sees the pruned network) and every
    selected tensor is restored bit for bit afterwards, also on error. ``context.sparsity`` (or a pattern) is
    needed; its scope, min_density, invert and pattern select each round's mask; the generator is not used.

    Returns:
        ``{name: float32 scores}``, re-coded so that ``select_masks`` reproduces the final mask.

    >>> from lightning_prune_init.parameters import select_parameters
    >>> net = torch.nn.Linear(4, 3)
    >>> ctx = ScoringContext(sparsity=0.5, options={"rounds": 2})
    >>> iterative_snip(net, [(torch.randn(6, 4), torch.randint(0, 3, (6,)))], select_parameters(net), ctx)["weight"].dtype
    torch.float32
    """
    rounds = check_criterion_options(iterative_snip, context.options)["rounds"]
    batches = batch_list(batches, "iterative_snip")
    context.target_sparsity("iterative_snip")
    check_can_score(model, parameters, "iterative_snip")
    tensors = dict(parameters.items())
    saved = {n: p.detach().clone() for n, p in tensors.items()}

    def round_scores(alive: dict[str, Tensor] | None) -> dict[str, Tensor]:
        if alive is not None:
            with torch.no_grad():
                for n, p in tensors.items():
                    p.masked_fill_(~alive[n].to(p.device), 0)
        return sensitivity(
            model, batches, parameters, context.loss, normalize=False, reduce_fn=context.reduce_fn,
            criterion="iterative_snip",
        )

    try:
        return iterate_rounds(round_scores, context, rounds, "iterative_snip", parameters)
    finally:
        with torch.no_grad():
            for n, p in tensors.items():
                p.copy_(saved[n])
