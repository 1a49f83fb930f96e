"""Masks and optimizers: zero pruned entries of optimizer state, re-zero pruned weights after each step.

Gradients of pruned entries are already 0 (:mod:`lightning_prune_init.masks.hooks`), but an optimizer step can
still move a pruned weight: weight decay on a weight that was not 0, momentum or Adam moments that were not 0
(a restored checkpoint's optimizer state, a step taken on weights written through ``.data``), or an optimizer that
mixes entries (Shampoo-like preconditioners). So each optimizer handed to ``apply_masks`` (or
:func:`attach_optimizers`) gets a step pre-hook and a step post-hook:

* **Elementwise optimizers** (``torch.optim`` SGD, Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta,
  exactly these classes) give an entry whose gradient, state and weight are 0 an update of exactly 0. After their
  step, a parameter that nobody changed since its last enforcement (the pre-hook compares its version counter) is
  known to be clean: its new version is recorded, no pass over the weights is needed ("trusted step").
* **Any other optimizer** (subclasses included) gets a full re-zeroing after every step.

The trusted step needs the optimizer state to be 0 at pruned entries: :func:`zero_optimizer_state_` makes it so
(called when attaching, by every forced enforcement, and by the callback after Lightning restores optimizer state
in ``on_train_start``). Measured costs: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightning_prune_init._validation import check_instances
from lightning_prune_init.masks.hooks import _check_module, _find_states, _MaskState, _zero_state_entries_

__all__ = ["ELEMENTWISE_OPTIMIZERS", "attach_optimizers", "detach_optimizers", "zero_optimizer_state_"]

#: The optimizer classes whose update of an entry with zero gradient, state and weight is exactly 0 (subclasses
#: are not trusted: they may override ``step``).
ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
)


def _attach(state: _MaskState, optimizer: torch.optim.Optimizer) -> list[Any]:
    """Register the step hooks of ``optimizer`` on ``state`` and zero its state at pruned entries; returns the
    handles (removed again by ``state.detach_optimizers()``)."""
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = tuple(n for n in state.pruned if id(state.param(n)) in ids)
    trusted = type(optimizer) in ELEMENTWISE_OPTIMIZERS
    pre = optimizer.register_step_pre_hook(functools.partial(_before_step, state, names))
    try:
        post = optimizer.register_step_post_hook(functools.partial(_after_step, state, names, trusted))
    except BaseException:
        pre.remove()
        raise
    state._optimizer_hooks += [pre, post]
    state._optimizers.append(weakref.ref(optimizer))
    return [pre, post]


def _before_step(state: _MaskState, names: tuple[str, ...], optimizer: Any, args: Any, kwargs: Any) -> None:
    stale = state.stale
    state._clean_before_step = {
        n for n in names if n in state.pruned and n not in stale and state.unchanged(n)
    }


def _after_step(state: _MaskState, names: tuple[str, ...], trusted: bool, optimizer: Any, args: Any, kwargs: Any) -> None:
    """Re-zero after a step; trust an elementwise optimizer's step on parameters clean before it."""
    if not trusted:
        state.enforce_()
        return
    clean = state._clean_before_step
    for name in names:
        if name not in state.pruned:  # removed since (remove_masks with names)
            continue
        if name in clean:
            state.note_clean(name)
        else:
            state.enforce_((name,))
    state.enforce_(n for n in state.pruned if n not in names)


def attach_optimizers(model: nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Zero the optimizers' state at pruned entries and re-zero pruned weights after each of their steps.

    Does nothing for a model without masks. Call it once per optimizer (the callback attaches the Trainer's
    optimizers once per fit and detaches them with :func:`detach_optimizers`).

    >>> from lightning_prune_init.masks import apply_masks
    >>> net = apply_masks(nn.Linear(2, 1, bias=False), {"weight": torch.tensor([[True, False]])})
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> attach_optimizers(net, [opt])
    >>> net(torch.ones(1, 2)).sum().backward()
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(1.0)  # changed after the forward, not by the optimizer ...
    >>> opt.step(); net.weight[0, 1].item()  # ... and re-zeroed after the step
    0.0
    """
    optimizers = check_instances("optimizers", optimizers, torch.optim.Optimizer, "torch.optim.Optimizer")
    for _, state in _find_states(_check_module(model)):
        for optimizer in optimizers:
            _attach(state, optimizer)


def detach_optimizers(model: nn.Module) -> None:
    """Remove the optimizer step hooks registered by ``apply_masks`` / :func:`attach_optimizers`.

    >>> from lightning_prune_init.masks import apply_masks
    >>> net = nn.Linear(2, 1, bias=False)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> _ = apply_masks(net, {"weight": torch.tensor([[True, False]])}, optimizers=[opt])
    >>> detach_optimizers(net)
    >>> net(torch.ones(1, 2)).sum().backward()
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(1.0)
    >>> opt.step(); net.weight[0, 1].item()  # no longer re-zeroed after a step (the next forward does it)
    1.0
    """
    for _, state in _find_states(_check_module(model)):
        state.detach_optimizers()


def zero_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """Zero the pruned entries of every per-parameter state tensor of ``optimizer`` shaped like its parameter.

    For each masked parameter of ``model`` held by ``optimizer``, every tensor in ``optimizer.state[p]`` whose shape
    is ``p.shape`` (SGD's ``momentum_buffer``, Adam's ``exp_avg`` and ``exp_avg_sq``, ...) gets
    ``masked_fill_(pruned, 0)``; scalars (``step``) and other shapes are left alone. Call it after optimizer state
    was loaded (Lightning restores it after ``on_fit_start``: the callback calls this in ``on_train_start``).
    Returns ``optimizer``.

    >>> from lightning_prune_init.masks import apply_masks
    >>> net = nn.Linear(2, 1, bias=False)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> opt.state[net.weight]["momentum_buffer"] = torch.ones(1, 2)  # as a restored checkpoint could hold
    >>> _ = apply_masks(net, {"weight": torch.tensor([[True, False]])})
    >>> zero_optimizer_state_(opt, net).state[net.weight]["momentum_buffer"].tolist()
    [[1.0, 0.0]]
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    with torch.no_grad():
        for _, state in _find_states(_check_module(model)):
            for name, pruned in state.pruned.items():
                p = state.param(name)
                _zero_state_entries_(optimizer.state.get(p), p, pruned)
    return optimizer
