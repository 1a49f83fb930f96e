"""When scoring can run, and how it leaves no trace: the checks before a criterion and the session around it.

Refused clearly, before anything runs (instead of a raw autograd error deep inside the model):

* scoring under ``torch.inference_mode()`` (no autograd there; Lightning runs validate/test/predict in it);
* a model with a parameter or buffer on the meta device (no values to score);
* selected tensors that autograd cannot differentiate: inference tensors, integer tensors.

Selected tensors that do not require grad (frozen tensors the user included by name) are scored by enabling
``requires_grad`` for the session and restoring it afterwards, also on error. The session runs the model
quietly (:func:`~lightning_prune_init._quiet.quiet_run`: eval mode, every train flag and random stream
restored).

>>> import torch
>>> from lightning_prune_init.parameters import select_parameters
>>> net = torch.nn.Linear(3, 2)
>>> net.weight.requires_grad_(False)  # doctest: +ELLIPSIS
Parameter containing:
...
>>> with scoring_session(net, select_parameters(net, include="weight"), "snip"):
...     net.weight.requires_grad
True
>>> net.weight.requires_grad
False
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from lightning_prune_init._quiet import quiet_run
from lightning_prune_init.parameters import ParameterSelection
from lightning_prune_init.scoring.losses import LossFn, check_loss_value

__all__ = ["check_can_score", "check_scoring_input", "check_twice_differentiable", "scoring_session", "second_order"]


def check_can_score(
    model: nn.Module, parameters: ParameterSelection | None, criterion: str, *, gradients: bool = True
) -> None:
    """Raise a clear error if ``criterion`` cannot score ``parameters`` of ``model`` now; change nothing.

    Args:
        parameters: the selected tensors (None: check the model only).
        gradients: whether the criterion differentiates (inference mode and tensor kinds matter then).

    Raises:
        RuntimeError: under ``torch.inference_mode()``, or a selected tensor is an inference tensor.
        ValueError: a parameter or buffer of ``model`` is on the meta device.
        TypeError: a selected tensor is not floating point.

    >>> check_can_score(torch.nn.Linear(2, 2).to("meta"), None, "snip")
    Traceback (most recent call last):
    ...
    ValueError: criterion 'snip' cannot score Linear: weight, bias are on the meta device (no values to score). Materialize the model first (e.g. `model.to_empty(device=...)` and initialize it, or let Lightning's `configure_model` run: prune in `on_fit_start` or later)
    """
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        shown = ", ".join(meta[:3]) + (f" and {len(meta) - 3} more" if len(meta) > 3 else "")
        raise ValueError(
            f"criterion {criterion!r} cannot score {type(model).__name__}: {shown} {'is' if len(meta) == 1 else 'are'} "
            "on the meta device (no values to score). Materialize the model first (e.g. `model.to_empty(device=...)` "
            "and initialize it, or let Lightning's `configure_model` run: prune in `on_fit_start` or later)"
        )
    if not gradients:
        return
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"criterion {criterion!r} needs autograd, which is off under torch.inference_mode(): call it outside the "
            "`with torch.inference_mode():` block (Lightning runs validate/test/predict under inference mode; prune "
            "before or in `fit`)"
        )
    for name, p in (parameters or {}).items():
        if p.is_inference():
            raise RuntimeError(
                f"criterion {criterion!r} cannot differentiate {name}: it is an inference tensor (made under "
                "torch.inference_mode()). Build or load the model outside inference mode, or replace the parameter "
                "by a clone made outside it"
            )
        if not p.is_floating_point():
            raise TypeError(f"criterion {criterion!r} cannot differentiate {name}: its dtype {p.dtype} is not floating")


@contextlib.contextmanager
def scoring_session(
    model: nn.Module, parameters: ParameterSelection, criterion: str, *, gradients: bool = True
) -> Iterator[list[str]]:
    """:func:`check_can_score`, then the model run quietly, with every selected tensor requiring grad.

    Yields the names of the tensors whose ``requires_grad`` was switched on; each is switched off again on exit,
    also when the block raises.

    >>> from lightning_prune_init.parameters import select_parameters
    >>> net = torch.nn.Linear(2, 2)
    >>> with scoring_session(net, select_parameters(net), "snip") as switched:
    ...     switched, net.training
    ([], False)
    """
    check_can_score(model, parameters, criterion, gradients=gradients)
    switched = [n for n, p in parameters.items() if gradients and not p.requires_grad]
    tensors = [parameters[n] for n in switched]
    devices = {p.device for p in parameters.values()}
    try:
        for p in tensors:
            p.requires_grad_(True)
        with quiet_run(model, devices):
            yield switched
    finally:
        for p in tensors:
            p.requires_grad_(False)


_SECOND_ORDER_HINTS = ("derivative", "differentiat", "double backward")
_ONCE_DIFFERENTIABLE = torch.autograd.function.once_differentiable(lambda ctx, *grads: None).__code__


def _second_order_error(criterion: str, why: object) -> RuntimeError:
    return RuntimeError(
        f"criterion {criterion!r} needs second derivatives (a Hessian-gradient product), but this model cannot "
        f"be differentiated twice: {why}. Attention already runs through the math SDPA kernel while scoring; "
        "an operation without a double backward remains (a custom autograd Function, a fused kernel): use "
        "another attention implementation (e.g. Hugging Face attn_implementation='eager'), or a criterion "
        "that needs first derivatives only ('snip', 'iterative_snip', 'synflow')"
    )


def check_twice_differentiable(output: torch.Tensor, criterion: str) -> None:
    """Refuse a graph holding a custom autograd Function whose backward is ``@once_differentiable``.

    PyTorch differentiates such a graph twice *without* an error, dropping the Function's second-order terms
    (measured on a tanh written as such a Function: ``Hg`` off by 25-90% of its largest entry), so a criterion
    using ``Hg`` would be silently wrong. The graph of ``output`` is walked once.

    Raises:
        RuntimeError: naming ``criterion`` and the Function.

    >>> x = torch.ones(2, requires_grad=True)
    >>> check_twice_differentiable((x * x).sum(), "grasp")
    """
    seen: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        forward_cls = getattr(node, "_forward_cls", None)
        if getattr(getattr(forward_cls, "backward", None), "__code__", None) is _ONCE_DIFFERENTIABLE:
            raise _second_order_error(criterion, f"the custom autograd Function {forward_cls.__qualname__} has a "
                                                 "@once_differentiable backward (PyTorch would drop its second-order terms)")
        stack.extend(f for f, _ in node.next_functions)


@contextlib.contextmanager
def second_order(criterion: str) -> Iterator[None]:
    """Differentiate twice: attention through the math SDPA kernel, and a clear error if the model still cannot.

    PyTorch's fused attention kernels (flash, memory-efficient, the CPU flash kernel) have no second derivative;
    the math kernel has. Inside the block ``torch.nn.functional.scaled_dot_product_attention`` uses it (so do
    Hugging Face models with ``attn_implementation="sdpa"``, their default). A RuntimeError about a missing
    derivative raised in the block becomes one that names ``criterion`` and says what to do.

    >>> x = torch.ones(2, requires_grad=True)
    >>> with second_order("grasp"):
    ...     g, = torch.autograd.grad((x ** 3).sum(), x, create_graph=True)
    ...     h, = torch.autograd.grad(g.sum(), x)
    >>> h
    tensor([6., 6.])
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    except RuntimeError as error:
        if not any(hint in str(error).lower() for hint in _SECOND_ORDER_HINTS):
            raise
        raise _second_order_error(criterion, error) from error


def check_scoring_input(model: nn.Module, batch: Any, loss: LossFn) -> None:
    """One cheap dry run of ``loss(model, batch)`` under ``no_grad``, raising the errors scoring would raise.

    Call it before anything changes the model (e.g. before re-initializing it): a batch the loss cannot read,
    a model returning what the loss cannot use, a non-scalar or non-finite loss, inference mode, a meta-device
    model. The model runs quietly (eval mode; train flags and random streams restored); nothing is changed.

    Raises:
        ScoringInputError, ValueError, RuntimeError: as scoring would (see :func:`check_can_score`).

    >>> from lightning_prune_init.scoring.losses import make_loss
    >>> net = torch.nn.Linear(4, 3)
    >>> check_scoring_input(net, (torch.randn(2, 4), torch.tensor([0, 2])), make_loss("labels"))
    >>> check_scoring_input(net, torch.randn(2, 4), make_loss("labels"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_prune_init.scoring.losses.ScoringInputError: labels='true' needs `(inputs, targets)` batches ...
    """
    check_can_score(model, None, "scoring")
    with quiet_run(model), torch.no_grad():
        check_loss_value(loss(model, batch))
