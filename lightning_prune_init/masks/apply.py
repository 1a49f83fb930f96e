"""Attaching and detaching masks: :func:`apply_masks` (all or nothing), :func:`remove_masks`, :func:`masked_nonzeros`.

Names. Masks are keyed by parameter names relative to the model. A tied tensor (a head sharing its embedding's
weight) has several names (``model.named_parameters(remove_duplicate=False)``); any of them is accepted, and the
mask is kept under the canonical one (the name ``model.named_parameters()`` yields). Its hooks cover every module
that holds it, so whichever module runs first sees the zeros.

All or nothing. :func:`apply_masks` checks everything first (model, masks, names, shapes, optimizers) and then
attaches; if anything fails while attaching, every mask and hook attached by that call is removed again and the
model is exactly as before (same weights, same hooks, the masks it had). The weights are zeroed last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_bool_masks, check_instances
from lightning_prune_init.masks.hooks import _STATE_ATTR, _check_module, _find_states, _MaskState
from lightning_prune_init.masks.optimizers import _attach

__all__ = ["apply_masks", "masked_nonzeros", "remove_masks"]


def _names(model: nn.Module) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """``{any name: canonical name}`` and ``{any name: shape}`` of the model's parameters."""
    canonical_of: dict[int, str] = {id(p): n for n, p in model.named_parameters()}
    canonical, shapes = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canonical[name] = canonical_of[id(p)]
        shapes[name] = tuple(p.shape)
    return canonical, shapes


def _checked(model: nn.Module, masks: Mapping[str, Tensor], argument: str = "masks") -> dict[str, Tensor]:
    """The masks keyed by canonical names, checked (two names of one tied tensor must carry the same mask)."""
    canonical, shapes = _names(model)
    masks = check_bool_masks(masks, shapes, argument=argument, owner=type(model).__name__)
    out: dict[str, Tensor] = {}
    given: dict[str, str] = {}
    for key, mask in masks.items():
        name = canonical[key]
        if name in out and not torch.equal(out[name], mask.to(out[name].device)):
            raise ValueError(
                f"`{argument}` has different masks for {given[name]!r} and {key!r}, two names of one tied tensor; "
                "give one mask under one of its names"
            )
        out[name], given[name] = mask, key
    return out


def apply_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> nn.Module:
    """Attach boolean masks to ``model`` and enforce them from now on; returns ``model``.

    Pruned entries (``False`` in the mask) are set to exactly 0 at once; from then on their gradients are zeroed as
    they are accumulated, the weights are zeroed again before any forward of a module holding them (when changed
    since the last enforcement), before any state dict is taken, and after any step of the given optimizers
    (:mod:`lightning_prune_init.masks.hooks`). Applying masks to a model that already has some replaces the masks of
    the same names and keeps the others. Frozen parameters (``requires_grad=False``) are zeroed and enforced, with
    no gradient hook until they are unfrozen.

    Args:
        model: the module; its Parameters stay the same objects under the same names.
        masks: ``{name: bool tensor}``, ``True`` = kept, each of its parameter's shape; keys are parameter names
            relative to ``model``, any name of a tied tensor (the mask is kept under the canonical name). The tensors
            are copied (to the parameter's device).
        optimizers: optimizers already holding these parameters: their per-parameter state is zeroed at pruned
            entries now, and their steps are followed by a re-zeroing (``docs/guide.md``).

    Raises:
        TypeError / ValueError: ``model`` not a module, an unknown key, a non-bool mask, a shape mismatch, two
            different masks for one tied tensor, an optimizer that is not one. Raised before anything changes; if
            attaching fails later, the model is restored exactly as it was and the error is raised.

    >>> net = nn.Linear(3, 2)
    >>> _ = apply_masks(net, {"weight": torch.tensor([[True, False, True], [False, True, True]])})
    >>> (net.weight == 0).int().tolist()
    [[0, 1, 0], [1, 0, 0]]
    """
    _check_module(model)
    optimizers = check_instances("optimizers", optimizers, torch.optim.Optimizer, "torch.optim.Optimizer")
    checked = _checked(model, masks)
    owners = _owners(model, checked)
    params = {name: model.get_parameter(name) for name in checked}
    pruned = {name: ~mask.to(device=params[name].device) for name, mask in checked.items()}  # `~` copies

    state = model.__dict__.get(_STATE_ATTR)
    created = state is None
    if created:
        state = _MaskState()
    undo = _Undo(model, state, created)
    try:
        if created:
            model.__dict__[_STATE_ATTR] = state
        for name in checked:
            state.pruned[name] = pruned[name]
            state.owners[name] = owners[name]
            state.versions.pop(name, None)
            state.stale.discard(name)
        state.index_modules()
        for key, names in state.module_names.items():
            if key not in state.module_hooks:
                module = next(m for n in names for m, _, k in state.owners[n] if k == key)
                undo.handles += state.hook_module(key, module)
        for name, p in params.items():
            if state._hooked_params.get(name) is not p or (p.requires_grad and name not in state._grad_hooks):
                state._follow(name, p)
                undo.followed.append(name)
        for optimizer in optimizers:
            undo.handles += _attach(state, optimizer)
    except BaseException:
        undo.rollback()
        raise
    state.force_(checked)  # zero the weights and the attached optimizers' state (can no longer fail)
    for name, p in params.items():
        if p.grad is not None:
            p.grad.masked_fill_(pruned[name].to(p.grad.device), 0)
    return model


def _owners(model: nn.Module, checked: Mapping[str, Tensor]) -> dict[str, tuple[tuple[nn.Module, str, str], ...]]:
    """``{name: ((module, attr, module key), ...)}``: every module holding the tensor, each once, canonical first."""
    aliases: dict[str, list[str]] = {}
    for alias, name in _names(model)[0].items():
        aliases.setdefault(name, []).append(alias)
    out = {}
    for name in checked:
        held: dict[int, tuple[nn.Module, str, str]] = {}
        for alias in sorted(aliases[name], key=lambda a: a != name):
            key, _, attr = alias.rpartition(".")
            module = model.get_submodule(key) if key else model
            held.setdefault(id(module), (module, attr, key))
        out[name] = tuple(held.values())
    return out


class _Undo:
    """What one ``apply_masks`` call changed in a mask state, to put back if attaching fails."""

    def __init__(self, model: nn.Module, state: _MaskState, created: bool) -> None:
        self.model, self.state, self.created = model, state, created
        self.data = (dict(state.pruned), dict(state.owners), dict(state.versions), set(state.stale))
        self.module_keys = set(state.module_hooks)
        self.optimizer_counts = (len(state._optimizer_hooks), len(state._optimizers))
        self.handles: list = []
        self.followed: list[str] = []

    def rollback(self) -> None:
        state = self.state
        for handle in self.handles:
            handle.remove()
        for key in [k for k in state.module_hooks if k not in self.module_keys]:
            del state.module_hooks[key]
        hooks, opts = self.optimizer_counts
        del state._optimizer_hooks[hooks:], state._optimizers[opts:]
        for name in self.followed:  # registered again lazily (param()) if the name keeps a mask
            state.unhook_name(name)
        state.pruned, state.owners, state.versions, state.stale = self.data
        state.index_modules()
        if self.created:
            self.model.__dict__.pop(_STATE_ATTR, None)


def remove_masks(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Detach masks and their hooks, with the zeros baked in; returns the removed masks (``True`` = kept).

    Without ``names``, every mask of ``model`` and its submodules is removed and the model is an ordinary
    ``nn.Module`` again (pruned entries are 0 now but may change in later training). With ``names`` (keys as
    :func:`~lightning_prune_init.masks.hooks.get_masks` gives them, or any other name of a tied tensor), only those
    masks and their hooks are removed and the others stay enforced: a layer switched to sparse execution, which
    has no dense Parameter any more, is detached this way before its Parameter is replaced. A parameter already
    gone from its module is detached without the final zeroing.

    Raises:
        ValueError: a name that has no mask attached (nothing is removed then).

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> keep = {"0.weight": torch.tensor([[True, False], [True, True]]), "1.weight": torch.tensor([[False, True]])}
    >>> _ = apply_masks(net, keep)
    >>> list(remove_masks(net, ["1.weight"]))
    ['1.weight']
    >>> from lightning_prune_init.masks import get_masks
    >>> list(get_masks(net))
    ['0.weight']
    """
    _check_module(model)
    states = _find_states(model)
    if names is None:
        chosen = {prefix: list(state.pruned) for prefix, state in states}
    else:
        if isinstance(names, str):
            names = [names]
        chosen = _resolve(model, states, list(names))
    removed: dict[str, Tensor] = {}
    for prefix, state in states:
        for name in chosen.get(prefix, ()):
            try:
                state.force_((name,))
            except RuntimeError:  # the parameter is gone from its module (replaced by sparse execution)
                pass
            removed[prefix + name] = ~state.pruned.pop(name)
            state.owners.pop(name)
            state.versions.pop(name, None)
            state.stale.discard(name)
            state.unhook_name(name)
        state.index_modules()
        for key in [k for k in state.module_hooks if k not in state.module_names]:
            state.unhook_module(key)
        if not state.pruned:
            state.remove_hooks()
            holder = model.get_submodule(prefix[:-1]) if prefix else model
            holder.__dict__.pop(_STATE_ATTR, None)
    return removed


def _resolve(model: nn.Module, states: list, names: list[str]) -> dict[str, list[str]]:
    """``{state prefix: [canonical names]}`` for the given names; ``ValueError`` before any change if one is not masked."""
    canonical, _ = _names(model)
    chosen: dict[str, list[str]] = {}
    for given in names:
        name = canonical.get(given, given) if isinstance(given, str) else given
        for prefix, state in states:
            if isinstance(name, str) and name.startswith(prefix) and name[len(prefix):] in state.pruned:
                chosen.setdefault(prefix, []).append(name[len(prefix):])
                break
        else:
            masked = [prefix + n for prefix, state in states for n in state.pruned]
            shown = ", ".join(masked[:8]) + (", ..." if len(masked) > 8 else "")
            raise ValueError(
                f"`names` has {given!r}, which has no mask attached to {type(model).__name__}; masked names: "
                f"{shown or '(none)'}"
            )
    return {prefix: list(dict.fromkeys(found)) for prefix, found in chosen.items()}


def masked_nonzeros(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, int]:
    """How many entries of each parameter are non-zero where ``masks`` prune them: ``{name: count}``, 0 when clean.

    The check for restored weights ("the weights are zero wherever the masks prune"): ``masks`` are keyed like
    :func:`apply_masks`'s (any name of a tied tensor), ``True`` = kept; the result has one entry per given key.
    Reads the weights only (nothing is attached or changed).

    >>> net = nn.Linear(2, 1, bias=False)
    >>> _ = torch.nn.init.ones_(net.weight)
    >>> masked_nonzeros(net, {"weight": torch.tensor([[True, False]])})
    {'weight': 1}
    """
    _check_module(model)
    checked = check_bool_masks(masks, _names(model)[1], owner=type(model).__name__)
    out = {}
    with torch.no_grad():
        for name, mask in checked.items():
            p = model.get_parameter(name)
            out[name] = int(torch.count_nonzero(p[~mask.to(p.device)]))
    return out
