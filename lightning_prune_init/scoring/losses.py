"""The scoring loss: one contract for supervised, label-free and data-free scoring (docs/criteria.md, "Losses").

:func:`make_loss` builds ``loss(model, batch) -> scalar`` once, from the supervision and at most one hook:

* ``"labels"``: the model's own loss. ``loss_fn(model, batch) -> scalar`` replaces the default, which reads
  ``(inputs, targets, ...)`` batches (cross-entropy of ``model(inputs)`` against ``targets``) and dict batches
  the way Hugging Face models take them (``model(**batch).loss``; the batch holds ``labels``).
* ``"label_free"`` and ``"data_free"``: the uniform target on the logits,
  ``L = −(1/C) Σ_k log softmax(z)_k`` averaged over every leading dimension of ``z [..., C]``. The logits come
  from ``logits_fn(model, batch)``, or by default from ``model(inputs)`` (bare tensor or ``(inputs, ...)``
  batches) or ``model(**batch)`` without its ``labels`` entry (dict batches): a tensor ``[batch, classes]``, or
  the ``.logits`` of the model's output ``[..., classes]``. Data-free scoring is the same loss on noise batches
  (:func:`~lightning_prune_init.scoring.noise.noise_batches`).

A combination the package cannot honour is refused here, never ignored: a ``loss_fn`` with label-free or
data-free supervision (it would score the labels' loss), a ``logits_fn`` with ``"labels"`` (the package would
have to guess how targets align with the logits, e.g. the shift of a causal LM).

>>> import torch
>>> net = torch.nn.Linear(4, 3)
>>> loss = make_loss("label_free")
>>> bool(loss(net, torch.randn(2, 4)) > 0)
True
>>> make_loss("label_free", loss_fn=lambda model, batch: model(batch).sum())
Traceback (most recent call last):
...
ValueError: supervision='label_free' cannot use `loss_fn`: the loss would be your own (supervised) loss, so the masks would be those of supervision='labels'. Give `logits_fn(model, batch) -> logits [..., classes]` instead (the package then builds the uniform-target loss), or use supervision='labels'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune_init._imports import resolve_callable
from lightning_prune_init._validation import check_choice, check_number

__all__ = [
    "LABEL_KEYS",
    "LossFn",
    "ScoringInputError",
    "ScoringLoss",
    "Supervision",
    "check_loss_value",
    "logits_of",
    "make_loss",
    "model_output",
    "uniform_target_loss",
]

Supervision = Literal["labels", "label_free", "data_free"]
SUPERVISIONS = ("labels", "label_free", "data_free")
#: ``loss(model, batch) -> scalar tensor``.
LossFn = Callable[[nn.Module, Any], Tensor]
#: Keys of dict batches left out of the model call when no labels are used.
LABEL_KEYS = ("labels",)

_LOSS_HELP = (
    "The default loss reads batches `(inputs, targets, ...)` (tuple or list; a bare tensor of inputs with "
    "supervision='label_free'/labels='uniform'), calls `model(inputs)` and expects logits [batch, classes] (or a "
    "model output with `.logits`) and integer class targets [batch]; dict batches are passed as `model(**batch)` "
    "(Hugging Face style: `.loss` with labels, `.logits` without). For anything else pass "
    "`loss_fn(model, batch) -> scalar tensor` (supervision='labels') or `logits_fn(model, batch) -> logits` "
    "(label-free, data-free); in YAML, their import path, e.g. `loss_fn: my_project.losses.snip_loss`."
)


class ScoringInputError(ValueError):
    """A scoring batch that the default loss cannot read, or a loss that is not a scalar tensor."""


def _accepts_keys(model: nn.Module, keys: list[str]) -> list[str]:
    """The keys that ``model.forward`` does not take as keyword arguments (none when it takes ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a signature that cannot be read: let the call decide
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    names = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return [k for k in keys if k not in names]


def model_output(model: nn.Module, batch: Any, *, with_labels: bool) -> Any:
    """Run ``model`` on a batch the way the default loss does, and return its raw output.

    A bare tensor: ``model(batch)``; a tuple or list: ``model(batch[0])``; a dict: ``model(**batch)``, without the
    :data:`LABEL_KEYS` entries unless ``with_labels``.

    Raises:
        ScoringInputError: any other batch, or a dict whose keys ``model.forward`` does not take.

    >>> model_output(torch.nn.Identity(), (torch.ones(1, 2), torch.zeros(1)), with_labels=False)
    tensor([[1., 1.]])
    """
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return model(batch[0])
    if isinstance(batch, Mapping) and batch and all(isinstance(k, str) for k in batch):
        inputs = dict(batch) if with_labels else {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        refused = _accepts_keys(model, list(inputs))
        if refused:
            raise ScoringInputError(
                f"cannot read a scoring batch of type dict with keys {list(batch)}: the default loss calls "
                f"`model(**batch)`, but {type(model).__name__}.forward takes no argument {', '.join(map(repr, refused))}. "
                + _LOSS_HELP
            )
        return model(**inputs)
    raise ScoringInputError(f"cannot read a scoring batch of type {type(batch).__name__}. {_LOSS_HELP}")


def _field(output: Any, name: str) -> Any:
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: a tensor ``[batch, classes]``, or the ``.logits`` (attribute or key) of an
    output object, ``[..., classes]``.

    Raises:
        ScoringInputError: anything else (the message says what the model returned).

    >>> logits_of({"logits": torch.zeros(2, 5, 7)}).shape
    torch.Size([2, 5, 7])
    """
    if isinstance(output, Tensor):
        if output.dim() == 2:
            return output
        got = f"a tensor of shape {tuple(output.shape)}"
    else:
        found = _field(output, "logits")
        if isinstance(found, Tensor) and found.dim() >= 1:
            return found
        got = type(output).__name__ + ("" if found is None else " whose `.logits` is not a tensor [..., classes]")
    raise ScoringInputError(f"the model returned {got}, not logits [batch, classes]. {_LOSS_HELP}")


def uniform_target_loss(logits: Tensor) -> Tensor:
    """Cross-entropy against the uniform distribution: ``−(1/C) Σ_k log softmax(z)_k``, averaged over every
    leading dimension of ``logits [..., C]`` (computed in float32 at least).

    >>> round(float(uniform_target_loss(torch.zeros(3, 4))), 4)  # log 4
    1.3863
    """
    return -F.log_softmax(logits.float(), dim=-1).mean()


def _labels_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of ``logits [batch, classes]`` against class ids ``[batch]`` or class probabilities."""
    if logits.dim() != 2:
        raise ScoringInputError(
            f"the model returned logits of shape {tuple(logits.shape)}, not logits [batch, classes], which the "
            f"supervised default loss needs for `(inputs, targets)` batches. {_LOSS_HELP}"
        )
    logits = logits.float()
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


def check_loss_value(loss: Any, index: int = 0) -> Tensor:
    """``loss`` as a 0-d tensor, after checking it is a finite scalar tensor (``index``: the batch, for messages).

    Raises:
        ScoringInputError: not a tensor with one element.
        ValueError: NaN or infinite (``"... scores would not be finite"``).

    >>> check_loss_value(torch.tensor([2.0]))
    tensor(2.)
    """
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ScoringInputError(f"the scoring loss must be a scalar tensor, got {loss!r:.80}")
    if not bool(torch.isfinite(loss.detach())):
        raise ValueError(
            f"the scoring loss is {float(loss.detach())} on batch {index}: scores would not be finite. "
            "Check the inputs and the initialization"
        )
    return loss.reshape(())


class ScoringLoss:
    """The loss :func:`make_loss` returns: ``loss(model, batch) -> scalar tensor``, plus the logits it reads.

    Attributes:
        supervision: ``"labels"``, ``"label_free"`` or ``"data_free"``.
        loss_fn, logits_fn: the hook in use (at most one), or None.
        temperature: the logits are divided by it before the loss (GraSP's ``T``); 1 by default.

    >>> net = torch.nn.Linear(4, 3)
    >>> loss = make_loss("label_free").with_temperature(2.0)
    >>> x = torch.randn(2, 4)
    >>> torch.equal(loss.logits(net, x), net(x) / 2.0)
    True
    """

    def __init__(
        self,
        supervision: Supervision = "labels",
        loss_fn: LossFn | None = None,
        logits_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.supervision = supervision
        self.loss_fn = loss_fn
        self.logits_fn = logits_fn
        self.temperature = temperature

    def __repr__(self) -> str:
        hook = "loss_fn" if self.loss_fn is not None else "logits_fn" if self.logits_fn is not None else "default"
        return f"ScoringLoss(supervision={self.supervision!r}, {hook}, temperature={self.temperature:g})"

    @property
    def uniform_target(self) -> bool:
        """Whether the loss is the uniform target on the logits (label-free and data-free supervision)."""
        return self.supervision != "labels"

    def with_temperature(self, temperature: float) -> ScoringLoss:
        """The same loss with the logits divided by ``temperature`` (a ``loss_fn`` and a model's own ``.loss`` on
        dict batches are used as they are: no logits to divide)."""
        check_number("temperature", temperature, minimum=0.0, minimum_inclusive=False)
        return ScoringLoss(self.supervision, self.loss_fn, self.logits_fn, float(temperature))

    def logits(self, model: nn.Module, batch: Any) -> Tensor:
        """The logits of ``batch``: ``logits_fn(model, batch)``, else read from the model's output
        (:func:`model_output`, :func:`logits_of`); divided by ``temperature``."""
        if self.logits_fn is not None:
            logits = self.logits_fn(model, batch)
            if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.is_floating_point():
                got = f"shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
                raise ScoringInputError(f"`logits_fn` must return floating logits [..., classes], got {got}")
        else:
            logits = logits_of(model_output(model, batch, with_labels=False))
        return logits if self.temperature == 1.0 else logits / self.temperature

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(model, batch)
        if self.uniform_target:
            return uniform_target_loss(self.logits(model, batch))
        if isinstance(batch, Tensor):
            raise ScoringInputError(
                "labels='true' needs `(inputs, targets)` batches (supervision='labels'), got a bare tensor of shape "
                f"{tuple(batch.shape)}; use supervision='label_free' (labels='uniform') for label-free scoring. "
                + _LOSS_HELP
            )
        if isinstance(batch, Mapping):
            output = model_output(model, batch, with_labels=True)
            loss = _field(output, "loss")
            if not isinstance(loss, Tensor):
                raise ScoringInputError(
                    f"cannot read a scoring batch of type dict with keys {list(batch)}: `model(**batch)` returned "
                    f"{type(output).__name__} with no `.loss` tensor; with supervision='labels' give the batch a "
                    "'labels' entry (Hugging Face models then compute their loss), or pass `loss_fn`. " + _LOSS_HELP
                )
            return loss
        targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) >= 2 else None
        if isinstance(batch, (tuple, list)) and not isinstance(targets, Tensor):
            raise ScoringInputError(f"labels='true' needs a target tensor as the batch's second element. {_LOSS_HELP}")
        return _labels_loss(self.logits(model, batch), targets)  # type: ignore[arg-type]


def make_loss(
    supervision: Supervision = "labels",
    *,
    loss_fn: LossFn | str | None = None,
    logits_fn: Callable[[nn.Module, Any], Tensor] | str | None = None,
) -> ScoringLoss:
    """Build the scoring loss ``loss(model, batch) -> scalar`` once; refuse what it cannot honour.

    Args:
        supervision: ``"labels"`` (default), ``"label_free"`` or ``"data_free"`` (module docstring).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` or its import path; only with ``"labels"``.
        logits_fn: ``logits_fn(model, batch) -> logits [..., classes]`` or its import path; only with
            ``"label_free"``/``"data_free"``: the loss is the uniform target on these logits.

    Raises:
        ValueError: an unknown supervision, ``loss_fn`` with label-free/data-free supervision, ``logits_fn`` with
            ``"labels"``, or a path that cannot be imported.
        TypeError: a hook that is neither callable nor an import path.

    >>> make_loss("data_free", logits_fn=lambda model, batch: model(**batch).logits)
    ScoringLoss(supervision='data_free', logits_fn, temperature=1)
    """
    check_choice("supervision", supervision, SUPERVISIONS)
    loss_fn = resolve_callable(loss_fn, "loss_fn")
    logits_fn = resolve_callable(logits_fn, "logits_fn")
    if supervision != "labels" and loss_fn is not None:
        raise ValueError(
            f"supervision={supervision!r} cannot use `loss_fn`: the loss would be your own (supervised) loss, so the "
            "masks would be those of supervision='labels'. Give `logits_fn(model, batch) -> logits [..., classes]` "
            "instead (the package then builds the uniform-target loss), or use supervision='labels'"
        )
    if supervision == "labels" and logits_fn is not None:
        raise ValueError(
            "supervision='labels' cannot use `logits_fn`: how the batch's targets align with the logits (e.g. the "
            "shift of a causal language model) is the model's business. Give `loss_fn(model, batch) -> scalar` (or "
            "nothing: dict batches with 'labels' use the model's own `.loss`), or use supervision='label_free'/"
            "'data_free' with `logits_fn`"
        )
    return ScoringLoss(supervision, loss_fn, logits_fn)
