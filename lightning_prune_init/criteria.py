"""Pruning-at-init criteria other than SNIP, registered in :data:`lightning_prune_init.scoring.CRITERIA`.

Every criterion has the registry's signature (:func:`~lightning_prune_init.scoring.register_criterion`) and
returns ``{parameter name: non-negative scores}``, higher = keep, for the prunable parameters
(:func:`~lightning_prune_init.parameters.prunable_parameters`). None changes the model: no weight, no
batch-norm statistic, no ``.grad``, no train/eval flag, no global RNG state is left changed.

* ``"grasp"`` (Wang et al. 2020): ``S = −θ ⊙ Hg`` with ``g = ∂L/∂θ`` and ``Hg`` by double backprop; GraSP
  *removes* the largest ``S``. Returned: ``max(S) − S = θ⊙Hg − min(θ⊙Hg)`` (float64), so "keep the highest
  score" is GraSP's rule. The shift is monotone; two values of ``θ⊙Hg`` closer than float64's resolution at
  the scale of ``|min|`` become equal (then ties are broken by position, as always).
* ``"synflow"`` (Tanaka et al. 2020): data-free and iterative, see :func:`synflow`.
* ``"magnitude"``: ``|θ|``. Data-free.
* ``"random"``: i.i.d. uniform scores from the given ``generator`` (seed 0 when none is given). Data-free.
* ``"iterative_snip"`` (de Jorge et al. 2021): SNIP in rounds, see :func:`iterative_snip`.

Iterative criteria and their masks
----------------------------------
SynFlow and iterative SNIP prune in ``rounds``: at round ``k = 1..n`` the density is ``d^(k/n)`` (``d = 1 −
sparsity``; the last round uses ``sparsity`` itself), scores are recomputed with the current mask applied,
and the new mask is chosen by ``select_masks`` with the caller's ``scope``/``min_density``/``invert`` among
the entries still alive. Entries pruned in an earlier round are never selected again, even when alive
entries score exactly 0: before each selection the round's scores ``r`` are re-coded as

* ``invert=False``: alive -> ``nextafter(r, +inf)`` (the next float up, > 0, order and ties kept exactly),
  pruned -> 0;
* ``invert=True``: alive -> ``r``, pruned -> the next float above the largest alive score.

The criterion returns the re-coded scores of the **last** round: they are exactly the input of the last
selection, so ``select_masks(scores, sparsity, scope=..., min_density=..., invert=...)`` with the same arguments
reproduces the final mask bit for bit (same values, same tie-break by mapping order and flat index). With other
selection arguments the scores are not meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_prune_init.parameters import prunable_parameters
from lightning_prune_init.scoring import (
    Labels,
    LossFn,
    ScoringInputError,
    connection_sensitivity,
    default_loss,
    register_criterion,
    resolve_callable,
    scoring_mode,
)
from lightning_prune_init.selection import Scope, select_masks, validate_min_density, validate_sparsity

Patterns = str | Sequence[str] | None
ReduceFn = Callable[[Tensor], Tensor] | None


# --- shared helpers --------------------------------------------------------------------------------------
def _batch_list(batches: Iterable[Any] | Tensor | None, criterion: str) -> list[Any]:
    if batches is None:
        raise ValueError(f"criterion {criterion!r} needs scoring batches; got `batches=None`")
    batches = [batches] if isinstance(batches, Tensor) else list(batches)
    if not batches:
        raise ValueError(f"`batches` is empty: criterion {criterion!r} needs at least one scoring batch")
    return batches


def _checked_loss(loss: Any, index: int) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ScoringInputError(f"the scoring loss must be a scalar tensor, got {loss!r:.80}")
    if not bool(torch.isfinite(loss)):
        raise ValueError(
            f"the scoring loss is {float(loss.detach())} on batch {index}: scores would not be finite. "
            "Check the inputs and the initialization"
        )
    return loss.reshape(())


def _check_finite(scores: Mapping[str, Tensor], criterion: str, hint: str) -> None:
    bad = [n for n, s in scores.items() if not bool(torch.isfinite(s).all())]
    if bad:
        raise ValueError(f"non-finite {criterion} scores for {', '.join(bad)}: {hint}")


def exponential_schedule(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each of ``rounds`` rounds: ``1 − d^(k/n)`` for ``k = 1..n``, ``d = 1 − sparsity``.

    The last entry is ``sparsity`` itself (not recomputed), so the final keep count is exactly the caller's.
    """
    sparsity = validate_sparsity(sparsity)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"`rounds` must be an integer >= 1, got {rounds!r}")
    density = 1.0 - sparsity
    return [1.0 - density ** (k / rounds) for k in range(1, rounds)] + [sparsity]


def _recode(raw: Mapping[str, Tensor], alive: Mapping[str, Tensor] | None, invert: bool) -> dict[str, Tensor]:
    """Round scores re-coded so that pruned entries can never be selected again (module docstring)."""
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


def _iterate(
    round_scores: Callable[[dict[str, Tensor] | None], dict[str, Tensor]],
    *,
    sparsity: float | None,
    rounds: int,
    scope: Scope,
    min_density: float,
    invert: bool,
    criterion: str,
) -> dict[str, Tensor]:
    if sparsity is None:
        raise ValueError(f"criterion {criterion!r} prunes in rounds and needs `sparsity`")
    min_density = validate_min_density(min_density)
    alive: dict[str, Tensor] | None = None
    scores: dict[str, Tensor] = {}
    for round_sparsity in exponential_schedule(sparsity, rounds):
        scores = _recode(round_scores(alive), alive, invert)
        alive = select_masks(
            scores, round_sparsity, scope=scope, min_density=min_density, invert=invert, on_layer_collapse="ignore"
        )
    return scores


# --- data-free criteria ----------------------------------------------------------------------------------
@register_criterion("magnitude", needs_data=False)
def magnitude(
    model: nn.Module,
    batches: Any = None,
    *,
    sparsity: float | None = None,
    scope: Scope = "global",
    min_density: float = 0.0,
    invert: bool = False,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    prune_biases: bool = False,
    reduce_fn: ReduceFn = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """``|θ|`` of every prunable parameter (float32, or float64 for float64 weights). Uses no data."""
    params = prunable_parameters(model, include=include, exclude=exclude, prune_biases=prune_biases)
    return {
        n: p.detach().abs().to(torch.float64 if p.dtype == torch.float64 else torch.float32)
        for n, p in params.items()
    }


@register_criterion("random", needs_data=False)
def random_scores(
    model: nn.Module,
    batches: Any = None,
    *,
    sparsity: float | None = None,
    scope: Scope = "global",
    min_density: float = 0.0,
    invert: bool = False,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    prune_biases: bool = False,
    reduce_fn: ReduceFn = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """I.i.d. uniform [0, 1) float64 scores, drawn in parameter order from ``generator`` on its device (CPU
    unless given otherwise) and moved to each parameter's device, so equal seeds give equal scores on every
    rank and device. ``generator=None`` uses a fresh generator seeded with 0 (the global RNG is not touched)."""
    params = prunable_parameters(model, include=include, exclude=exclude, prune_biases=prune_biases)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
    return {
        n: torch.rand(p.shape, generator=generator, dtype=torch.float64, device=generator.device).to(p.device)
        for n, p in params.items()
    }


def _input_shape(model: nn.Module, batches: Any, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        shape = tuple(input_shape)
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"`input_shape` must be a tuple of positive ints (one input, no batch dim), got {input_shape!r}")
        return shape
    if batches is not None:
        first = batches if isinstance(batches, Tensor) else next(iter(batches), None)
        if isinstance(first, (tuple, list)) and first and isinstance(first[0], Tensor):
            first = first[0]
        if isinstance(first, Tensor) and first.dim() >= 1:
            return tuple(first.shape[1:])
        raise ScoringInputError(
            "synflow reads the input shape from the first batch (a tensor or `(inputs, ...)`); pass "
            "`input_shape=(C, H, W)` instead"
        )
    example = getattr(model, "example_input_array", None)
    if isinstance(example, Tensor) and example.dim() >= 1:
        return tuple(example.shape[1:])
    for module in model.modules():
        shape = getattr(module, "input_shape", None)
        if isinstance(shape, (tuple, list)) and shape:
            return tuple(int(s) for s in shape)
    raise ValueError(
        "synflow needs the shape of one input: pass `input_shape=(C, H, W)`, a batch, or give the model an "
        "`example_input_array` or an `input_shape` attribute"
    )


@register_criterion("synflow", needs_data=False, iterative=True)
def synflow(
    model: nn.Module,
    batches: Any = None,
    *,
    sparsity: float | None = None,
    scope: Scope = "global",
    min_density: float = 0.0,
    invert: bool = False,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    prune_biases: bool = False,
    reduce_fn: ReduceFn = None,
    generator: torch.Generator | None = None,
    rounds: int = 100,
    dtype: torch.dtype | str = torch.float64,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Iterative synaptic flow (Tanaka et al. 2020), data-free.

    Each round: every floating parameter and buffer is replaced by its absolute value (pruned entries by 0),
    cast to ``dtype``, and an all-ones input ``[1, *input_shape]`` is run forward in eval mode (batch norm
    uses its running statistics); ``R = Σ model(1)`` and the score of a prunable entry is
    ``|∂R/∂θ ⊙ θ|`` at ``θ = |W|``. For a linear chain ``R = 1ᵀ|W_L|⋯|W_1|1``. The substitution is done
    with :func:`torch.func.functional_call`: the model itself is never written to.

    Args:
        sparsity: final sparsity (needed: the rounds follow the exponential schedule towards it).
        scope, min_density, invert: the selection of each round (pass the same to ``select_masks``).
        rounds: number of rounds ``n`` (default 100, as Tanaka et al.); density ``d^(k/n)`` after round ``k``.
        dtype: the computation's dtype; float64 by default (``R`` is a product over all layers and overflows
            float32 on deep or wide nets). ``"float32"`` / ``"float64"`` strings are accepted (YAML).
        input_shape: one input's shape without the batch dimension; default from the first batch, the model's
            ``example_input_array``, or an ``input_shape`` attribute of the model or a submodule.
        labels, loss_fn, reduce_fn, generator: not used (no data enters; every rank computes the same).

    Returns:
        ``{name: float64 scores}``, re-coded so that ``select_masks`` reproduces the final mask (module doc).
    """
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"`dtype` must be torch.float32 or torch.float64, got {dtype!r}")
    params = prunable_parameters(model, include=include, exclude=exclude, prune_biases=prune_biases)
    shape = _input_shape(model, batches, input_shape)
    first = next(iter(params.values()))
    state = {n: t.detach() for n, t in model.named_parameters()}
    state.update({n: t.detach() for n, t in model.named_buffers()})
    absolute = {n: t.abs().to(dtype) if t.is_floating_point() else t for n, t in state.items()}
    ones = torch.ones((1, *shape), dtype=dtype, device=first.device)

    def round_scores(alive: dict[str, Tensor] | None) -> dict[str, Tensor]:
        leaves = {
            n: (absolute[n] if alive is None else absolute[n] * alive[n]).clone().requires_grad_(True) for n in params
        }
        with torch.enable_grad():
            out = functional_call(model, {**absolute, **leaves}, (ones,))
            if not isinstance(out, Tensor):
                raise ScoringInputError(f"synflow needs a model returning a tensor, got {type(out).__name__}")
            flow = out.sum()
            if not bool(torch.isfinite(flow)):
                raise ValueError(
                    f"synflow's R = Σ f(1) is {float(flow.detach())} in {dtype}: the product of |W| over the layers "
                    "overflowed; use dtype=torch.float64 (the default) or check the weights"
                )
            grads = torch.autograd.grad(flow, list(leaves.values()), allow_unused=True)
        scores = {
            n: torch.zeros_like(leaf.detach()) if g is None else (g * leaf.detach()).abs_()
            for (n, leaf), g in zip(leaves.items(), grads)
        }
        _check_finite(scores, "synflow", "use dtype=torch.float64 (the default) or check the weights")
        return scores

    with scoring_mode(model, [first.device]):
        return _iterate(
            round_scores,
            sparsity=sparsity,
            rounds=rounds,
            scope=scope,
            min_density=min_density,
            invert=invert,
            criterion="synflow",
        )


# --- data-driven criteria --------------------------------------------------------------------------------
class _Tempered:
    """``model`` with its output divided by ``temperature`` (GraSP's ``T``), for :func:`default_loss`."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        self.model = model
        self.temperature = temperature

    def __call__(self, inputs: Tensor) -> Any:
        out = self.model(inputs)
        return out / self.temperature if isinstance(out, Tensor) else out


@register_criterion("grasp")
def grasp(
    model: nn.Module,
    batches: Iterable[Any] | Tensor,
    *,
    sparsity: float | None = None,
    scope: Scope = "global",
    min_density: float = 0.0,
    invert: bool = False,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    prune_biases: bool = False,
    reduce_fn: ReduceFn = None,
    generator: torch.Generator | None = None,
    temperature: float = 200.0,
) -> dict[str, Tensor]:
    """Gradient signal preservation (Wang et al. 2020): scores ``θ⊙Hg − min(θ⊙Hg)``, i.e. ``max(S) − S``.

    ``g = Σ_b ∂L_b/∂θ`` (summed over batches, then over ranks by ``reduce_fn``), and
    ``Hg = Σ_b ∂(gᵀ ∂L_b/∂θ)/∂θ`` by double backprop with ``g`` held constant; ``θ`` and ``H`` are restricted to
    the prunable parameters, as in the authors' code (weights of conv and linear layers). ``L_b`` is the
    default loss on the logits divided by ``temperature`` (the authors' ``T = 200``), or ``loss_fn`` as given
    (then ``temperature`` is not applied). The signed sums ``Σ_b θ⊙H_b g`` are reduced over ranks before the
    shift. The model runs in eval mode (the authors' code scores in train mode, batch statistics in batch
    norm; this package scores every criterion with running statistics, METHOD.md §1).

    Sign: GraSP removes the entries of largest ``S = −θ⊙Hg`` (removing them reduces the gradient norm the
    least, or increases it), i.e. keeps the lowest ``S``. Returned ``max(S) − S ≥ 0`` ranks the same way, higher
    = keep. ``sparsity``, ``scope``, ``min_density``, ``invert`` and ``generator`` are not used.

    Returns:
        ``{name: float64 scores}``, min 0.
    """
    if labels not in ("true", "uniform"):
        raise ValueError(f"`labels` must be 'true' or 'uniform', got {labels!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`temperature` must be a number > 0 (the authors use 200), got {temperature!r}")
    user_loss = resolve_callable(loss_fn)
    batches = _batch_list(batches, "grasp")
    params = prunable_parameters(model, include=include, exclude=exclude, prune_biases=prune_biases)
    names = list(params)
    tensors = [params[n] for n in names]

    def loss_of(batch: Any, index: int) -> Tensor:
        if user_loss is not None:
            return _checked_loss(user_loss(model, batch), index)
        return _checked_loss(default_loss(_Tempered(model, float(temperature)), batch, labels), index)

    with scoring_mode(model, [p.device for p in tensors]):
        g = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in tensors]
        for index, batch in enumerate(batches):
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_of(batch, index), tensors, allow_unused=True)
            for acc, gi in zip(g, grads):
                if gi is not None:
                    acc.add_(gi.float())
        if reduce_fn is not None:
            g = [reduce_fn(gi) for gi in g]
        theta_hg = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in tensors]
        for index, batch in enumerate(batches):
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_of(batch, index), tensors, create_graph=True, allow_unused=True)
                z = sum((gi.to(gr.dtype) * gr).sum() for gi, gr in zip(g, grads) if gr is not None)
                if not isinstance(z, Tensor) or not z.requires_grad:
                    continue  # the loss is linear in the prunable parameters: Hg = 0
                hg = torch.autograd.grad(z, tensors, allow_unused=True)
            for acc, h, p in zip(theta_hg, hg, tensors):
                if h is not None:
                    acc.add_(h.double() * p.detach().double())
    if reduce_fn is not None:
        theta_hg = [reduce_fn(t) for t in theta_hg]
    _check_finite(dict(zip(names, theta_hg)), "grasp", "check the loss, the inputs and the temperature")
    lowest = min(float(t.min()) for t in theta_hg)
    return {n: t - lowest for n, t in zip(names, theta_hg)}


@register_criterion("iterative_snip", iterative=True)
def iterative_snip(
    model: nn.Module,
    batches: Iterable[Any] | Tensor,
    *,
    sparsity: float | None = None,
    scope: Scope = "global",
    min_density: float = 0.0,
    invert: bool = False,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    prune_biases: bool = False,
    reduce_fn: ReduceFn = None,
    generator: torch.Generator | None = None,
    rounds: int = 10,
) -> dict[str, Tensor]:
    """Iterative SNIP (de Jorge et al. 2021, "Progressive skeletonization"): SNIP in ``rounds`` rounds.

    Round ``k`` computes :func:`~lightning_prune_init.scoring.connection_sensitivity` (unnormalized, signed sums
    over the batches and over ranks by ``reduce_fn`` before the absolute value) on the network with the
    entries pruned so far set to zero, and keeps the top ``d^(k/n)`` of the entries still alive (module
    docstring). Pruned weights stay zero for all later rounds (their score ``|g·0|`` is 0), so, unlike FORCE,
    nothing pruned comes back. Round 1 is plain SNIP, so ``rounds=1`` gives SNIP's mask.

    The pruned entries are zeroed in place during the rounds (so a custom ``loss_fn`` sees the pruned network)
    and every prunable parameter is restored bit for bit afterwards, also on error.

    Args:
        sparsity: final sparsity (needed). scope, min_density, invert: each round's selection.
        rounds: number of rounds (default 10, a cost choice: each round costs one forward+backward per batch).
        the rest: as :func:`~lightning_prune_init.scoring.connection_sensitivity`; ``generator`` is not used.

    Returns:
        ``{name: float32 scores}``, re-coded so that ``select_masks`` reproduces the final mask (module doc).
    """
    batches = _batch_list(batches, "iterative_snip")
    params = prunable_parameters(model, include=include, exclude=exclude, prune_biases=prune_biases)
    saved = {n: p.detach().clone() for n, p in params.items()}

    def round_scores(alive: dict[str, Tensor] | None) -> dict[str, Tensor]:
        if alive is not None:
            with torch.no_grad():
                for n, p in params.items():
                    p.masked_fill_(~alive[n].to(p.device), 0)
        return connection_sensitivity(
            model,
            batches,
            labels=labels,
            loss_fn=loss_fn,
            include=include,
            exclude=exclude,
            prune_biases=prune_biases,
            normalize=False,
            reduce_fn=reduce_fn,
        )

    try:
        return _iterate(
            round_scores,
            sparsity=sparsity,
            rounds=rounds,
            scope=scope,
            min_density=min_density,
            invert=invert,
            criterion="iterative_snip",
        )
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
