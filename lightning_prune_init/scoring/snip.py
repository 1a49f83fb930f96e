"""Connection sensitivity (SNIP, Lee et al. 2019, as used by Lee et al. 2020): the ``"snip"`` criterion.

For every selected entry ``w_j`` the connection sensitivity is ``g_j = ∂L/∂c_j`` at an all-ones mask ``c``,
which equals ``(∂L/∂w_j) · w_j``. Over several scoring batches the *signed* ``g`` of each batch's mean loss is
summed first and the absolute value taken last; the scores are then normalized by their sum over all selected
tensors, ``s_j = |Σ_b g_j| / Σ_k |Σ_b g_k|`` (docs/criteria.md).

Scoring leaves no trace: gradients are taken with ``torch.autograd.grad`` (no ``.grad`` is written, no DDP
reducer hook fires), the model runs quietly (eval mode, every train flag and random stream restored).

>>> import torch
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> scores = connection_sensitivity(net, [(torch.randn(16, 4), torch.randint(0, 3, (16,)))])
>>> sorted(scores), round(sum(float(s.sum()) for s in scores.values()), 5)
(['0.weight', '2.weight'], 1.0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_bool, check_choice
from lightning_prune_init.parameters import ParameterSelection, as_selection
from lightning_prune_init.scoring.context import ScoringContext
from lightning_prune_init.scoring.guards import scoring_session
from lightning_prune_init.scoring.losses import LossFn, check_loss_value, make_loss
from lightning_prune_init.scoring.registry import register_criterion
from lightning_prune_init.selection import all_finite, sum_float64

__all__ = ["batch_list", "connection_sensitivity", "sensitivity", "snip"]

Labels = Literal["true", "uniform"]


def check_batches(batches: Any) -> None:
    """Refuse ``batches`` that are neither an iterable of scoring batches nor one tensor (``TypeError``); ``None`` passes.

    >>> check_batches(5)
    Traceback (most recent call last):
    ...
    TypeError: `batches` must be an iterable of scoring batches (e.g. a list of (inputs, targets)) or one tensor of inputs, got int 5
    """
    if batches is not None and (not isinstance(batches, (Tensor, Iterable)) or isinstance(batches, (str, bytes))):
        raise TypeError(
            f"`batches` must be an iterable of scoring batches (e.g. a list of (inputs, targets)) or one tensor of "
            f"inputs, got {type(batches).__name__} {batches!r:.60}"
        )


def batch_list(batches: Iterable[Any] | Tensor | None, criterion: str) -> list[Any]:
    """``batches`` as a non-empty list (a single tensor or dict is one batch); ``ValueError`` naming ``criterion`` if
    there is none.

    >>> len(batch_list(torch.zeros(2, 3), "snip")), len(batch_list([(1, 2), (3, 4)], "snip"))
    (1, 2)
    """
    if batches is None:
        raise ValueError(f"criterion {criterion!r} needs scoring batches; got `batches=None`")
    check_batches(batches)
    batches = [batches] if isinstance(batches, (Tensor, dict)) else list(batches)
    if not batches:
        raise ValueError(f"`batches` is empty: criterion {criterion!r} needs at least one scoring batch")
    return batches


def _accumulate_(sums: list[Tensor | None], grads: Sequence[Tensor | None], tensors: Sequence[Tensor]) -> None:
    """``sums[i] += grads[i] · tensors[i]`` in float32, in place; a ``None`` sum takes over its gradient's storage.

    A gradient is reused (multiplied by the weight in place) only if it is float32, contiguous, of the
    parameter's shape, owns its whole storage and shares it with no other gradient of ``grads`` (autograd may
    hand the same tensor to both inputs of an addition); otherwise a new float32 tensor is made. Half-precision
    gradients and weights are promoted to float32 before the product, so ``g · w`` is exact up to one float32
    rounding. Later batches add their products (one rounding per product, then the sum).
    """
    storages = Counter(g.untyped_storage().data_ptr() for g in grads if g is not None)
    for i, (g, p) in enumerate(zip(grads, tensors)):
        if g is None:
            continue
        w = p.detach()
        if sums[i] is None:
            reusable = (
                g.dtype == torch.float32
                and g.is_contiguous()
                and g.shape == p.shape
                and storages[g.untyped_storage().data_ptr()] == 1  # no other gradient shares this memory
                and g.untyped_storage().nbytes() == g.numel() * g.element_size()
            )
            if reusable:
                sums[i] = g.mul_(w if w.dtype == torch.float32 else w.float())
            else:
                sums[i] = g.float() * w.float()
        else:
            sums[i].add_(g.float() * w.float())  # type: ignore[union-attr]


def sensitivity(
    model: nn.Module,
    batches: Iterable[Any] | Tensor | None,
    parameters: ParameterSelection,
    loss: LossFn,
    *,
    normalize: bool = True,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
    criterion: str = "snip",
) -> dict[str, Tensor]:
    """``|Σ_b (∂L_b/∂w) · w|`` of the selected tensors (normalized to sum 1 unless ``normalize=False``).

    The engine of :func:`connection_sensitivity` and of the ``snip``/``iterative_snip`` criteria: ``loss`` is
    built already (:func:`~lightning_prune_init.scoring.losses.make_loss`), ``reduce_fn`` is applied to the signed
    sums before the absolute value. See :func:`connection_sensitivity` for the rest.

    >>> from lightning_prune_init.parameters import select_parameters
    >>> net = torch.nn.Linear(4, 3)
    >>> raw = sensitivity(net, [torch.randn(5, 4)], select_parameters(net), make_loss("label_free"), normalize=False)
    >>> bool((raw["weight"] >= 0).all())
    True
    """
    batches = batch_list(batches, criterion)
    names = list(parameters)
    tensors = [parameters[n] for n in names]
    # The signed sums start as `None` and take over the first batch's gradient tensors where these can be
    # overwritten (float32, own contiguous storage of the parameter's shape): g·w is then formed in place, so
    # with one scoring batch the scores live in the memory autograd allocated for the gradients and scoring
    # peaks at about one float32 tensor per weight (plus the model), like one forward+backward.
    sums: list[Tensor | None] = [None] * len(tensors)
    with scoring_session(model, parameters, criterion):
        for index, batch in enumerate(batches):
            with torch.enable_grad():
                value = check_loss_value(loss(model, batch), index)
                grads = torch.autograd.grad(value, tensors, allow_unused=True)
            _accumulate_(sums, grads, tensors)
            del grads
    sums = [
        torch.zeros(p.shape, dtype=torch.float32, device=p.device) if s is None else s for s, p in zip(sums, tensors)
    ]
    if reduce_fn is not None:
        sums = [reduce_fn(s) for s in sums]
    scores = {n: s.abs_() for n, s in zip(names, sums)}
    bad = [n for n, s in scores.items() if not all_finite(s)]
    if bad:
        raise ValueError(f"non-finite connection sensitivity for {', '.join(bad)}: check the loss and the inputs")
    if normalize:
        total = sum(sum_float64(s) for s in scores.values())
        if total == 0.0:
            raise ValueError(
                "all connection-sensitivity scores are zero: the loss does not depend on the selected "
                "parameters (check the selection, the loss and that the weights are not all zero)"
            )
        for s in scores.values():
            s.div_(total)
    return scores


def connection_sensitivity(
    model: nn.Module,
    batches: Iterable[Any] | Tensor,
    *,
    parameters: ParameterSelection | str | Sequence[str] | None = None,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    logits_fn: Callable[[nn.Module, Any], Tensor] | str | None = None,
    normalize: bool = True,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Connection-sensitivity scores ``|Σ_b (∂L_b/∂w) · w|`` of the selected parameters of ``model`` (SNIP).

    Args:
        model: the network, in the state to be pruned (its weights are not changed).
        batches: an iterable of scoring batches (each as the model's training step would receive it, already
            on the model's device), or a single tensor of inputs (one batch, label-free).
        parameters: what is scored: a :class:`~lightning_prune_init.parameters.ParameterSelection`, glob
            pattern(s) (``include``), or None for the default rule (conv, linear and attention weights).
        labels: ``"true"`` (supervised: cross-entropy against the batch's targets, a dict batch's own ``.loss``,
            or ``loss_fn``) or ``"uniform"`` (label-free: the uniform target on the logits, or on ``logits_fn``'s),
            i.e. ``make_loss("labels" | "label_free", ...)`` (docs/criteria.md, "Losses").
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, or its import path; only with ``labels="true"``.
        logits_fn: ``logits_fn(model, batch) -> logits [..., classes]``, or its path; only with ``"uniform"``.
        normalize: divide by the sum of all scores (default), so they sum to 1 over all tensors.
        reduce_fn: applied to each tensor of signed sums before the absolute value, e.g. an all-reduce
            (sum) over data-parallel ranks so every rank scores on all ranks' batches.

    Returns:
        ``{parameter name: float32 scores}`` of each parameter's shape and device, non-negative.

    Raises:
        ScoringInputError: a batch the default loss cannot read, or a non-scalar loss.
        ValueError: no batches, a hook the labels cannot use, non-finite loss or scores, all-zero scores, or what
            :func:`~lightning_prune_init.parameters.as_selection` raises. The model is never modified.
        RuntimeError: called under ``torch.inference_mode()``.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> scores = connection_sensitivity(net, torch.randn(16, 4), labels="uniform", parameters="0.weight")
    >>> list(scores), round(float(scores["0.weight"].sum()), 5)
    (['0.weight'], 1.0)
    """
    check_choice("labels", labels, ("true", "uniform"))
    check_bool("normalize", normalize)
    check_batches(batches)
    loss = make_loss("labels" if labels == "true" else "label_free", loss_fn=loss_fn, logits_fn=logits_fn)
    selection = as_selection(model, parameters)
    return sensitivity(model, batches, selection, loss, normalize=normalize, reduce_fn=reduce_fn)


@register_criterion("snip")
def snip(
    model: nn.Module, batches: Iterable[Any] | Tensor, parameters: ParameterSelection, context: ScoringContext
) -> dict[str, Tensor]:
    """SNIP as a criterion: :func:`sensitivity` with the context's loss and ``reduce_fn`` (normalized, float32).

    >>> net = torch.nn.Linear(4, 3)
    >>> from lightning_prune_init.parameters import select_parameters
    >>> scores = snip(net, [torch.randn(8, 4)], select_parameters(net), ScoringContext(loss=make_loss("label_free")))
    >>> scores["weight"].shape
    torch.Size([3, 4])
    """
    return sensitivity(model, batches, parameters, context.loss, reduce_fn=context.reduce_fn)
