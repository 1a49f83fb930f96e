"""Pruning in rounds: the exponential schedule, and scores re-coded so the last round's mask is reproducible.

Iterative criteria (SynFlow, iterative SNIP) prune in ``rounds``: at round ``k = 1..n`` the density is
``d^(k/n)`` (``d = 1 − sparsity``; the last round uses ``sparsity`` itself), scores are recomputed with the
current mask applied, and the new mask is chosen by ``select_masks`` with the context's scope, minimum density
and inversion among the entries still alive. Entries pruned in an earlier round are never selected again, even
when alive entries score exactly 0: before each selection the round's scores ``r`` are re-coded as

* ``invert=False``: alive -> ``nextafter(r, +inf)`` (the next float up, > 0, order and ties kept exactly),
  pruned -> 0;
* ``invert=True``: alive -> ``r``, pruned -> the next float above the largest alive score.

:func:`iterate_rounds` returns the re-coded scores of the **last** round: they are exactly the input of the
last selection, so ``select_masks(scores, sparsity, ...)`` with the context's settings reproduces the final mask
bit for bit. With an N:M ``pattern`` the earlier rounds select unstructured masks on the way to ``1 − n/m`` and
only the last one applies the pattern (docs/criteria.md).

>>> exponential_schedule(0.99, 2)
[0.8999999999999999, 0.99]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune_init._validation import check_int
from lightning_prune_init.scoring.context import ScoringContext, check_sparsity
from lightning_prune_init.selection import select_masks

__all__ = ["exponential_schedule", "iterate_rounds", "recode_scores"]


def exponential_schedule(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each of ``rounds`` rounds: ``1 − d^(k/n)`` for ``k = 1..n``, ``d = 1 − sparsity``.

    The last entry is ``sparsity`` itself (not recomputed), so the final keep count is exactly the caller's.

    >>> exponential_schedule(0.9, 1)
    [0.9]
    """
    sparsity = check_sparsity(sparsity)  # type: ignore[assignment]
    check_int("rounds", rounds, minimum=1)
    density = 1.0 - sparsity
    return [1.0 - density ** (k / rounds) for k in range(1, rounds)] + [sparsity]


def recode_scores(raw: Mapping[str, Tensor], alive: Mapping[str, Tensor] | None, invert: bool) -> dict[str, Tensor]:
    """Round scores re-coded so that pruned entries (``alive`` False) can never be selected again (module doc).

    >>> recode_scores({"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([True, False])}, False)["w"]
    tensor([1.4013e-45, 0.0000e+00])
    """
    if alive is None:
        alive = {n: torch.ones_like(r, dtype=torch.bool) for n, r in raw.items()}
    if not invert:
        return {
            n: torch.where(alive[n], torch.nextafter(r, torch.full_like(r, math.inf)), torch.zeros_like(r))
            for n, r in raw.items()
        }
    dtype = torch.float64 if len({r.dtype for r in raw.values()}) > 1 else next(iter(raw.values())).dtype
    top = max((float(r[alive[n]].max()) for n, r in raw.items() if bool(alive[n].any())), default=0.0)
    top_t = torch.nextafter(torch.tensor(top, dtype=dtype), torch.tensor(math.inf, dtype=dtype))
    return {n: torch.where(alive[n], r.to(dtype), top_t.to(r.device)) for n, r in raw.items()}


def iterate_rounds(
    round_scores: Callable[[dict[str, Tensor] | None], dict[str, Tensor]],
    context: ScoringContext,
    rounds: int,
    criterion: str,
    layouts: Any = None,
) -> dict[str, Tensor]:
    """Run ``rounds`` rounds of ``round_scores(alive) -> raw scores`` (``alive`` is None in round 1) and return the
    re-coded scores of the last round (module docstring). ``layouts`` (e.g. the selection) go to ``select_masks``
    with an N:M pattern.

    Raises:
        ValueError: the context has neither ``sparsity`` nor ``pattern``, or ``rounds < 1``.

    >>> ctx = ScoringContext(sparsity=0.5)
    >>> scores = iterate_rounds(lambda alive: {"w": torch.arange(4.0)}, ctx, 2, "doc")
    >>> select_masks(scores, 0.5)["w"]
    tensor([False, False,  True,  True])
    """
    schedule = exponential_schedule(context.target_sparsity(criterion), rounds)
    settings = context.selection_settings(layouts)
    unstructured = {k: v for k, v in settings.items() if k not in ("pattern", "layouts")}
    alive: dict[str, Tensor] | None = None
    scores: dict[str, Tensor] = {}
    for index, round_sparsity in enumerate(schedule):
        last = index == len(schedule) - 1
        scores = recode_scores(round_scores(alive), alive, context.invert)
        kwargs = settings if last else unstructured
        sparsity = context.sparsity if last and context.pattern is not None else round_sparsity
        alive = select_masks(scores, sparsity, on_layer_collapse="ignore", **kwargs)
    return scores
