"""Score with a criterion, then select the masks with the same settings: :func:`criterion_masks`.

Everything is checked before any scoring: the criterion and its options, the loss contract
(:func:`~lightning_prune_init.scoring.losses.make_loss`), the selection settings, the parameter selection.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> scores, masks = criterion_masks(net, [torch.randn(16, 4)], criterion="snip", sparsity=0.75,
...                                 supervision="label_free")
>>> sum(int(m.sum()) for m in masks.values())  # 25% of 56 weights
14
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_choice
from lightning_prune_init.parameters import ParameterSelection, as_selection
from lightning_prune_init.scoring.context import ScoringContext, check_sparsity
from lightning_prune_init.scoring.guards import check_can_score, second_order
from lightning_prune_init.scoring.losses import LossFn, Supervision, make_loss
from lightning_prune_init.scoring.registry import Criterion, check_criterion_options, get_criterion
from lightning_prune_init.selection import select_masks

__all__ = ["criterion_masks", "run_criterion"]


def run_criterion(
    criterion: str | Criterion,
    model: nn.Module,
    batches: Iterable[Any] | Tensor | None,
    parameters: ParameterSelection,
    context: ScoringContext,
) -> dict[str, Tensor]:
    """``criterion(model, batches, parameters, context)``, checked: what it returns must be one score tensor of the
    right shape per selected tensor, keyed by the selection's names. A ``second_order`` criterion runs in
    :func:`~lightning_prune_init.scoring.guards.second_order` (math SDPA kernel, clear error).

    Raises:
        ValueError: scores for other tensors than the selection, or of another shape.
        TypeError: the criterion returned no mapping of tensors.

    >>> from lightning_prune_init.parameters import select_parameters
    >>> net = torch.nn.Linear(3, 2)
    >>> run_criterion("magnitude", net, None, select_parameters(net), ScoringContext())["weight"].shape
    torch.Size([2, 3])
    """
    fn = get_criterion(criterion)
    name = getattr(fn, "criterion_name", getattr(fn, "__qualname__", repr(fn)))
    parameters.require_module(model)
    check_can_score(model, parameters, name, gradients=False)
    if getattr(fn, "second_order", False):
        with second_order(name):
            scores = fn(model, batches, parameters, context)
    else:
        scores = fn(model, batches, parameters, context)
    if not isinstance(scores, Mapping) or not all(isinstance(s, Tensor) for s in scores.values()):
        raise TypeError(f"criterion {name!r} must return {{parameter name: score tensor}}, got {type(scores).__name__}")
    missing = [n for n in parameters if n not in scores]
    extra = [n for n in scores if n not in parameters.entries]
    if missing or extra:
        raise ValueError(
            f"criterion {name!r} returned scores for other tensors than the selection: missing "
            f"{missing or 'none'}, not selected {extra or 'none'} (keys are the names `model.named_parameters()` yields)"
        )
    wrong = [f"{n} {tuple(scores[n].shape)} vs {tuple(parameters.entries[n].shape)}" for n in parameters
             if tuple(scores[n].shape) != parameters.entries[n].shape]
    if wrong:
        raise ValueError(f"criterion {name!r} returned scores of the wrong shape: {', '.join(wrong)}")
    return {n: scores[n] for n in parameters}


def criterion_masks(
    model: nn.Module,
    batches: Iterable[Any] | Tensor | None,
    *,
    criterion: str | Criterion = "snip",
    sparsity: float | None,
    parameters: ParameterSelection | str | Sequence[str] | None = None,
    scope: Literal["global", "layerwise"] = "global",
    min_density: float = 0.0,
    invert: bool = False,
    pattern: str | None = None,
    supervision: Supervision = "labels",
    loss_fn: LossFn | str | None = None,
    logits_fn: Callable[[nn.Module, Any], Tensor] | str | None = None,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    criterion_options: Mapping[str, Any] | None = None,
    on_layer_collapse: Literal["warn", "error", "ignore"] = "warn",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Score ``parameters`` with ``criterion`` and select the masks with the same settings; returns ``(scores, masks)``.

    Args:
        model: the network (never modified).
        batches: scoring batches as the training step receives them (noise batches for ``"data_free"``:
            :func:`~lightning_prune_init.scoring.noise.noise_batches`); ``None`` for data-free criteria.
        criterion: a registered name (``"snip"``, ``"grasp"``, ``"synflow"``, ``"iterative_snip"``,
            ``"magnitude"``, ``"random"``), an import path or a function ``fn(model, batches, parameters, context)``.
        sparsity: fraction removed, in ``[0, 1)``; ``None`` only with a ``pattern``.
        parameters: a selection, glob pattern(s) (``include``), or None for the default rule.
        scope, min_density, invert, pattern: the mask selection (``select_masks``; the pattern is passed only when
            set, with the selection as layouts).
        supervision, loss_fn, logits_fn: the loss contract (:func:`~lightning_prune_init.scoring.losses.make_loss`).
        reduce_fn: all-reduce (sum) over data-parallel ranks, applied to signed sums; generator: for ``random``.
        criterion_options: the criterion's options (:func:`~lightning_prune_init.scoring.registry.check_criterion_options`),
            e.g. ``{"rounds": 100}`` for ``synflow``, ``{"temperature": 200.0}`` for ``grasp``.
        on_layer_collapse: ``"warn"`` (default), ``"error"`` or ``"ignore"`` when a tensor keeps nothing.

    Raises:
        ValueError / TypeError: any bad argument, before scoring; then what the criterion raises.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> scores, masks = criterion_masks(net, None, criterion="synflow", sparsity=0.5, scope="layerwise",
    ...                                 criterion_options={"rounds": 2, "input_shape": (4,)})
    >>> [int(m.sum()) for m in masks.values()]
    [16, 12]
    """
    fn = get_criterion(criterion)
    options = check_criterion_options(fn, criterion_options)
    check_sparsity(sparsity, pattern)
    check_choice("on_layer_collapse", on_layer_collapse, ("warn", "error", "ignore"))
    loss = make_loss(supervision, loss_fn=loss_fn, logits_fn=logits_fn)
    context = ScoringContext(loss=loss, sparsity=sparsity, scope=scope, min_density=min_density, invert=invert,
                             pattern=pattern, reduce_fn=reduce_fn, generator=generator, options=options)
    selection = as_selection(model, parameters)
    scores = run_criterion(fn, model, batches, selection, context)
    masks = select_masks(scores, context.sparsity, on_layer_collapse=on_layer_collapse,
                         **context.selection_settings(selection))
    return scores, masks
