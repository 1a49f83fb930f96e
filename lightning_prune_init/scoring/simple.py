"""The data-free baselines: ``"magnitude"`` (``|θ|``) and ``"random"`` (i.i.d. uniform scores).

Neither runs the model. ``random`` draws from the context's generator only (seed 0 when none is given), so equal
seeds give equal scores on every rank and device.

>>> import torch
>>> from lightning_prune_init.parameters import select_parameters
>>> net = torch.nn.Linear(3, 2)
>>> scores = magnitude(net, None, select_parameters(net), ScoringContext())
>>> torch.equal(scores["weight"], net.weight.detach().abs())
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init.parameters import ParameterSelection
from lightning_prune_init.scoring.context import ScoringContext
from lightning_prune_init.scoring.guards import check_can_score
from lightning_prune_init.scoring.registry import register_criterion

__all__ = ["magnitude", "random_scores"]


@register_criterion("magnitude", needs_data=False)
def magnitude(model: nn.Module, batches: Any, parameters: ParameterSelection, context: ScoringContext) -> dict[str, Tensor]:
    """``|θ|`` of every selected tensor (float32, or float64 for float64 weights). Uses no data.

    >>> from lightning_prune_init.parameters import select_parameters
    >>> net = torch.nn.Linear(2, 1).double()
    >>> magnitude(net, None, select_parameters(net), ScoringContext())["weight"].dtype
    torch.float64
    """
    check_can_score(model, parameters, "magnitude", gradients=False)
    return {
        n: p.detach().abs().to(torch.float64 if p.dtype == torch.float64 else torch.float32)
        for n, p in parameters.items()
    }


@register_criterion("random", needs_data=False)
def random_scores(
    model: nn.Module, batches: Any, parameters: ParameterSelection, context: ScoringContext
) -> dict[str, Tensor]:
    """I.i.d. uniform [0, 1) float64 scores, drawn in selection order from ``context.generator`` on its device
    (CPU unless given otherwise) and moved to each parameter's device. Without a generator a fresh one seeded
    with 0 is used (the global RNG is not touched).

    >>> from lightning_prune_init.parameters import select_parameters
    >>> net = torch.nn.Linear(3, 2)
    >>> a = random_scores(net, None, select_parameters(net), ScoringContext(generator=torch.Generator().manual_seed(0)))
    >>> torch.equal(a["weight"], random_scores(net, None, select_parameters(net), ScoringContext())["weight"])
    True
    """
    check_can_score(model, parameters, "random", gradients=False)
    generator = context.generator if context.generator is not None else torch.Generator().manual_seed(0)
    return {
        n: torch.rand(p.shape, generator=generator, dtype=torch.float64, device=generator.device).to(p.device)
        for n, p in parameters.items()
    }
