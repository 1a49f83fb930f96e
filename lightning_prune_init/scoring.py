"""Connection sensitivity (SNIP, Lee et al. 2019; as used by Lee et al. 2020) and the scoring batches.

For every prunable entry ``w_j`` the connection sensitivity is ``g_j = ∂L/∂c_j`` at an all-ones mask
``c``, which equals ``(∂L/∂w_j) · w_j``. Over several scoring batches the *signed* ``g`` of each batch's mean
loss is summed first and the absolute value taken last (METHOD.md §1); the scores are then normalized by
their sum over all prunable tensors, ``s_j = |Σ_b g_j| / Σ_k |Σ_b g_k|``.

Scoring leaves no trace: gradients are taken with ``torch.autograd.grad`` (no ``.grad`` is written, no
DDP reducer hook fires), the model runs in eval mode (batch-norm running statistics are neither used for
updates nor changed, dropout is off) and every module's train/eval flag is restored, and the global RNG
streams are forked and restored.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune_init.parameters import prunable_parameters
from lightning_prune_init.selection import all_finite, sum_float64

Labels = Literal["true", "uniform"]
LossFn = Callable[[nn.Module, Any], Tensor]

_LOSS_HELP = (
    "The default loss reads batches `(inputs, targets, ...)` (tuple or list; a bare tensor of inputs is accepted "
    "with labels='uniform'), calls `model(inputs)` and expects logits of shape [batch, classes] and integer "
    "class targets of shape [batch]. For anything else pass `loss_fn(model, batch) -> scalar tensor` "
    "(in YAML: its import path, e.g. `loss_fn: my_project.losses.snip_loss`)."
)


class ScoringInputError(ValueError):
    """A scoring batch that the default loss cannot read, or a loss that is not a finite scalar."""


def resolve_callable(value: str | Callable | None, argument: str = "loss_fn") -> Callable | None:
    """Return ``value`` if callable, import it if it is a ``"package.module.name"`` path, else raise."""
    if value is None or callable(value):
        return value
    if not isinstance(value, str) or "." not in value:
        raise TypeError(f"`{argument}` must be a callable or its import path 'package.module.name', got {value!r}")
    module_name, _, attr = value.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`{argument}`={value!r} cannot be imported: {err}") from err
    if not callable(obj):
        raise TypeError(f"`{argument}`={value!r} is not callable")
    return obj


def _split_batch(batch: Any, labels: Labels) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        if labels == "true":
            raise ScoringInputError(
                "labels='true' needs `(inputs, targets)` batches, got a bare tensor of shape "
                f"{tuple(batch.shape)}; use labels='uniform' for label-free scoring. " + _LOSS_HELP
            )
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], Tensor):
        targets = batch[1] if len(batch) >= 2 else None
        if labels == "true" and not isinstance(targets, Tensor):
            raise ScoringInputError(f"labels='true' needs a target tensor as the batch's second element. {_LOSS_HELP}")
        return batch[0], targets
    raise ScoringInputError(f"cannot read a scoring batch of type {type(batch).__name__}. {_LOSS_HELP}")


def default_loss(model: nn.Module, batch: Any, labels: Labels = "true") -> Tensor:
    """Mean cross-entropy against the targets (``"true"``) or against the uniform distribution (``"uniform"``).

    The uniform target gives ``L = −(1/C) Σ_k log softmax(f(x))_k`` averaged over the batch (METHOD.md §4).
    """
    inputs, targets = _split_batch(batch, labels)
    logits = model(inputs)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = f"a tensor of shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ScoringInputError(f"the model returned {got}, not logits [batch, classes]. {_LOSS_HELP}")
    logits = logits.float()
    if labels == "uniform":
        return -F.log_softmax(logits, dim=1).mean()
    assert targets is not None
    if targets.dtype.is_floating_point and targets.shape == logits.shape:
        return F.cross_entropy(logits, targets.float())  # class probabilities
    if targets.dtype.is_floating_point or targets.shape != logits.shape[:1]:
        raise ScoringInputError(
            f"targets of shape {tuple(targets.shape)} and dtype {targets.dtype} do not fit logits of shape "
            f"{tuple(logits.shape)}. {_LOSS_HELP}"
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ScoringInputError(
            f"targets range over [{int(targets.min())}, {int(targets.max())}] but the model returns "
            f"{logits.shape[1]} classes. {_LOSS_HELP}"
        )
    return F.cross_entropy(logits, targets)


@contextmanager
def scoring_mode(model: nn.Module, devices: Sequence[torch.device] = ()):
    """Eval mode and forked RNG for the duration; every module's train flag and the RNG state are restored."""
    modes = [(m, m.training) for m in model.modules()]
    cuda_devices = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            model.eval()
            yield
    finally:
        for m, training in modes:
            m.training = training


def noise_batches(
    like: Tensor,
    num_batches: int = 1,
    *,
    seed: int = 0,
    distribution: Literal["normal", "uniform"] = "normal",
) -> list[Tensor]:
    """Random inputs shaped like ``like`` (one real input batch) for data-free scoring.

    Drawn from a dedicated ``torch.Generator`` seeded with ``seed`` (the global RNG is not touched), on
    ``like``'s device, in its dtype if floating (else float32). ``"normal"``: standard normal;
    ``"uniform"``: uniform on [0, 1).
    """
    if not isinstance(like, Tensor):
        raise TypeError(f"`like` must be an input tensor, got {type(like).__name__}")
    if num_batches < 1:
        raise ValueError(f"`num_batches` must be >= 1, got {num_batches}")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"`distribution` must be 'normal' or 'uniform', got {distribution!r}")
    dtype = like.dtype if like.is_floating_point() else torch.float32
    generator = torch.Generator(device=like.device).manual_seed(seed)
    draw = torch.randn if distribution == "normal" else torch.rand
    return [draw(like.shape, generator=generator, device=like.device, dtype=dtype) for _ in range(num_batches)]


def _accumulate_(sums: list[Tensor | None], grads: Sequence[Tensor | None], tensors: Sequence[Tensor]) -> None:
    """``sums[i] += grads[i] · tensors[i]`` in float32, in place; a ``None`` sum takes over its gradient's storage.

    A gradient is reused (multiplied by the weight in place) only if it is float32, contiguous, of the
    parameter's shape, owns its whole storage and shares it with no other gradient of ``grads`` (autograd may
    hand the same tensor to both inputs of an addition); otherwise a new float32 tensor is made. Half-precision
    gradients and weights are promoted to float32 before the product, so ``g · w`` is exact up to one float32
    rounding. Later batches add their products (one rounding per product, then the sum), as before.
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


def connection_sensitivity(
    model: nn.Module,
    batches: Iterable[Any] | Tensor,
    *,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    prune_biases: bool = False,
    normalize: bool = True,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Connection-sensitivity scores ``|Σ_b (∂L_b/∂w) · w|`` of the prunable parameters of ``model``.

    Args:
        model: the network, in the state to be pruned (its weights are not changed).
        batches: an iterable of scoring batches (each as the model's training step would receive it, already
            on the model's device), or a single tensor of inputs (one batch, label-free).
        labels: ``"true"`` (cross-entropy against the batch's targets) or ``"uniform"`` (label-free: the
            uniform distribution as target). Ignored when ``loss_fn`` is given.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, or its import path; replaces the default loss.
        include, exclude, prune_biases: which parameters are scored, see
            :func:`lightning_prune_init.parameters.prunable_parameters` (default: conv and linear weights).
        normalize: divide by the sum of all scores (default), so they sum to 1 over all tensors.
        reduce_fn: applied to each tensor of signed sums before the absolute value, e.g. an all-reduce
            (sum) over data-parallel ranks so every rank scores on all ranks' batches.

    Returns:
        ``{parameter name: float32 scores}`` of each parameter's shape and device, non-negative.

    Raises:
        ScoringInputError: a batch the default loss cannot read, or a non-scalar / non-finite loss.
        ValueError: no batches, no prunable parameters, patterns matching nothing, non-finite or all-zero
            scores. The model is never modified.
    """
    if labels not in ("true", "uniform"):
        raise ValueError(f"`labels` must be 'true' or 'uniform', got {labels!r}")
    loss_fn = resolve_callable(loss_fn)
    params = prunable_parameters(model, include=include, exclude=exclude, prune_biases=prune_biases)
    names = list(params)
    tensors = [params[n] for n in names]
    if isinstance(batches, Tensor):
        batches = [batches]
    # The signed sums start as `None` and take over the first batch's gradient tensors where these can be
    # overwritten (float32, own contiguous storage of the parameter's shape): g·w is then formed in place, so
    # with one scoring batch the scores live in the memory autograd allocated for the gradients and scoring
    # peaks at about one float32 tensor per weight (plus the model), like one forward+backward.
    sums: list[Tensor | None] = [None] * len(tensors)
    devices = [p.device for p in tensors]
    n_batches = 0
    with scoring_mode(model, devices):
        for index, batch in enumerate(batches):
            with torch.enable_grad():
                loss = loss_fn(model, batch) if loss_fn is not None else default_loss(model, batch, labels)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ScoringInputError(f"the scoring loss must be a scalar tensor, got {loss!r:.80}")
                if not bool(torch.isfinite(loss)):
                    raise ValueError(
                        f"the scoring loss is {float(loss.detach())} on batch {index}: scores would not be finite. "
                        "Check the inputs and the initialization"
                    )
                grads = torch.autograd.grad(loss.reshape(()), tensors, allow_unused=True)
            _accumulate_(sums, grads, tensors)
            del grads
            n_batches += 1
    if n_batches == 0:
        raise ValueError("`batches` is empty: connection sensitivity needs at least one scoring batch")
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
                "parameters (check `include`/`exclude`, the loss and that the weights are not all zero)"
            )
        for s in scores.values():
            s.div_(total)
    return scores


# --- the criterion registry ------------------------------------------------------------------------------
Criterion = Callable[..., dict[str, Tensor]]

#: Registered pruning-at-init criteria by name (``tuple(CRITERIA)`` lists the names). Add one with
#: :func:`register_criterion`; look one up (or import one by path) with :func:`get_criterion`.
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, needs_data: bool = True, iterative: bool = False) -> Callable[[Criterion], Criterion]:
    """Decorator: register a scoring function under ``name``.

    Every criterion has the signature (keywords after ``batches`` are passed by name; a criterion ignores what
    it does not use)::

        fn(model, batches, *, sparsity, scope, min_density, invert, labels, loss_fn, include, exclude,
           prune_biases, reduce_fn, generator, **criterion_options) -> {parameter name: float scores}

    and returns non-negative scores of each prunable parameter's shape and device, higher = keep. The
    contract: ``select_masks(scores, sparsity, scope=scope, min_density=min_density, invert=invert)``, with the
    same selection arguments as the criterion received, gives the criterion's masks (iterative criteria use
    them in their rounds and encode their final mask in the scores; see :mod:`lightning_prune_init.criteria`).

    Args:
        name: the registry key (also what YAML configs give as ``criterion``).
        needs_data: False for data-free criteria, which accept ``batches=None``.
        iterative: True when the criterion prunes in rounds and so needs ``sparsity`` and the selection options.

    Raises:
        ValueError: ``name`` is empty, contains a dot (dots mean import paths), or is already registered to
            another function.
    """
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"a criterion name must be a non-empty string without dots, got {name!r}")

    def decorator(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise TypeError(f"register_criterion({name!r}) decorates a function, got {type(fn).__name__}")
        if name in CRITERIA and CRITERIA[name] is not fn:
            raise ValueError(f"criterion {name!r} is already registered (to {CRITERIA[name].__qualname__})")
        fn.criterion_name = name
        fn.needs_data = needs_data
        fn.iterative = iterative
        CRITERIA[name] = fn
        return fn

    return decorator


def get_criterion(criterion: str | Criterion) -> Criterion:
    """The scoring function registered as ``criterion``, or imported from its path ``"package.module.name"``.

    A callable is returned as is. Unregistered callables are treated as needing data and not iterative.

    Raises:
        ValueError: an unknown name (the message lists :data:`CRITERIA`) or a path that cannot be imported.
        TypeError: neither a string nor a callable.
    """
    if callable(criterion):
        return criterion
    if not isinstance(criterion, str):
        raise TypeError(f"`criterion` must be a name, an import path or a callable, got {type(criterion).__name__}")
    if criterion in CRITERIA:
        return CRITERIA[criterion]
    if "." not in criterion:
        raise ValueError(
            f"unknown `criterion` {criterion!r}; registered: {', '.join(map(repr, CRITERIA))}, or give the import "
            "path of your own scoring function ('package.module.name')"
        )
    return resolve_callable(criterion, "criterion")


def criterion_needs_data(criterion: str | Criterion) -> bool:
    """Whether the criterion reads scoring batches (False for ``synflow``, ``magnitude``, ``random``)."""
    return bool(getattr(get_criterion(criterion), "needs_data", True))


@register_criterion("snip")
def snip(
    model: nn.Module,
    batches: Iterable[Any] | Tensor,
    *,
    sparsity: float | None = None,
    scope: str = "global",
    min_density: float = 0.0,
    invert: bool = False,
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    prune_biases: bool = False,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """SNIP in the registry's signature: :func:`connection_sensitivity` (normalized, float32).

    ``sparsity``, ``scope``, ``min_density``, ``invert`` and ``generator`` are not used.
    """
    return connection_sensitivity(
        model,
        batches,
        labels=labels,
        loss_fn=loss_fn,
        include=include,
        exclude=exclude,
        prune_biases=prune_biases,
        reduce_fn=reduce_fn,
    )


def criterion_masks(
    model: nn.Module,
    batches: Iterable[Any] | Tensor | None,
    *,
    criterion: str | Criterion = "snip",
    sparsity: float,
    scope: Literal["global", "layerwise"] = "global",
    min_density: float = 0.0,
    invert: bool = False,
    on_layer_collapse: Literal["warn", "error", "ignore"] = "warn",
    labels: Labels = "true",
    loss_fn: LossFn | str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    prune_biases: bool = False,
    reduce_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    criterion_options: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Score with ``criterion`` and select the masks with the same selection arguments; returns ``(scores, masks)``.

    The selection arguments are checked before any scoring. ``criterion_options`` are passed to the criterion
    as extra keywords (e.g. ``{"rounds": 100}`` for ``synflow``, ``{"temperature": 200.0}`` for ``grasp``).
    See :func:`register_criterion` for the other arguments.
    """
    from lightning_prune_init.selection import select_masks, validate_min_density, validate_sparsity

    fn = get_criterion(criterion)
    sparsity = validate_sparsity(sparsity)
    min_density = validate_min_density(min_density)
    if scope not in ("global", "layerwise"):
        raise ValueError(f"`scope` must be 'global' or 'layerwise', got {scope!r}")
    if criterion_options is not None and not isinstance(criterion_options, dict):
        raise TypeError(f"`criterion_options` must be a dict of keyword arguments, got {type(criterion_options).__name__}")
    scores = fn(
        model,
        batches,
        sparsity=sparsity,
        scope=scope,
        min_density=min_density,
        invert=invert,
        labels=labels,
        loss_fn=loss_fn,
        include=include,
        exclude=exclude,
        prune_biases=prune_biases,
        reduce_fn=reduce_fn,
        generator=generator,
        **(criterion_options or {}),
    )
    masks = select_masks(
        scores, sparsity, scope=scope, min_density=min_density, invert=invert, on_layer_collapse=on_layer_collapse
    )
    return scores, masks


from lightning_prune_init import criteria as _criteria  # noqa: E402,F401  (registers the other criteria)
