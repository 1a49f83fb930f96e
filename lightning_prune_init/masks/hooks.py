"""How masks are enforced: the per-model mask state and the hooks that keep pruned entries at exactly 0.

One :class:`_MaskState` lives on the module the masks were applied to (in its ``__dict__``: not a submodule,
not a buffer, so the model's ``state_dict`` keeps its plain keys). It holds one ``bool`` tensor per masked
parameter (``True`` where the entry is pruned) and these hooks, each removed through its handle:

* **Gradients.** A post-accumulate-grad hook on each masked parameter zeroes the pruned entries of ``.grad`` as
  soon as the gradient is accumulated, so optimizer state (momentum, Adam moments) stays 0 for them and gradient
  clipping sees the masked gradient. Frozen parameters (``requires_grad=False``) get none; it is registered at
  the first enforcement after they are unfrozen.
* **Forward.** A forward pre-hook on every module that holds a masked parameter (under any of its names, so a
  tied head is covered too) zeroes its pruned entries when the parameter's version counter moved since the last
  enforcement. Nothing is written when nothing changed, so two forwards before one backward never modify a
  tensor saved for backward, and the hook allocates nothing.
* **State dict.** A state-dict pre-hook on the same modules forces enforcement (an unconditional
  ``masked_fill_``) before their values are read: every ``model.state_dict()`` and every checkpoint holds
  exact zeros, whatever was written through ``.data``.
* **Optimizer steps** (the optimizers handed to ``apply_masks``): see :mod:`lightning_prune_init.masks.optimizers`.

``.data`` writes. Writing through ``p.data`` (weight averaging, EMA swaps, user code) does not bump ``p._version``,
so the version check cannot see it. Two ways out, both cheap: :func:`mark_masks_stale` makes the next forward
pre-hook of each masked module force enforcement once (call it before a validation or test epoch; when nothing is
stale the hooks do one truthiness check), and :func:`enforce_masks_` forces a pass now. A forced pass writes
through ``.data`` (no version bump, so it never invalidates a tensor saved for backward) and also zeroes the
pruned entries of the attached optimizers' per-parameter state, which a step on dirty weights may have made
non-zero: after a forced pass, weights, gradients and optimizer state are all 0 at pruned entries again.

The ``pruning_masks()`` protocol. A module that keeps its mask in its own structure (a layer switched to sparse
execution has no dense ``weight`` Parameter any more) reports it by implementing::

    def pruning_masks(self) -> dict[str, torch.Tensor]:
        '''{attribute name: bool tensor, True = kept}, for the masks this module enforces itself.'''

:func:`get_masks` and :func:`~lightning_prune_init.masks.report.sparsity_report` then list its masks under
``"<module name>.<attribute>"``, next to the masks enforced here. Nothing else is asked of such a module: it
enforces its own masks.

The state survives ``copy.deepcopy`` and pickling (hook handles travel with the copied modules; gradient hooks
are registered again at the copy's first forward). User guide: ``docs/guide.md``; costs: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_prune_init._torch_internals import parameter_slot

__all__ = ["enforce_masks_", "get_masks", "mark_masks_stale"]

_STATE_ATTR = "_prune_init_masks"


class _MaskState:
    """Masks of one module and the hooks that enforce them. Internal: use the public functions.

    Attributes:
        pruned: ``{name: bool tensor}``, ``True`` where the entry is pruned; names are canonical
            (``model.named_parameters()``) and relative to the module holding the state.
        owners: ``{name: ((module, attr, module key), ...)}``, every module that holds the tensor, the canonical one
            first; a module key is the module's qualified name relative to the state's module.
        module_names: ``{module key: names}``, the masked names each hooked module holds (read by its hooks).
        module_hooks: ``{module key: (forward pre-hook handle, state-dict pre-hook handle)}``.
        versions: ``{name: version counter at the last enforcement}``.
        stale: names whose next enforcement is forced (:func:`mark_masks_stale`).
    """

    def __init__(self) -> None:
        self.pruned: dict[str, Tensor] = {}
        self.owners: dict[str, tuple[tuple[nn.Module, str, str], ...]] = {}
        self.module_names: dict[str, tuple[str, ...]] = {}
        self.versions: dict[str, int] = {}
        self.stale: set[str] = set()
        self.module_hooks: dict[str, tuple[RemovableHandle, RemovableHandle]] = {}
        self._grad_hooks: dict[str, RemovableHandle] = {}
        self._hooked_params: dict[str, nn.Parameter] = {}
        self._optimizer_hooks: list[RemovableHandle] = []
        self._optimizers: list[weakref.ref] = []
        self._clean_before_step: set[str] = set()

    # --- parameters ---------------------------------------------------------------------------------
    def param(self, name: str) -> nn.Parameter:
        """The masked Parameter ``name``; follows a replaced Parameter object (its gradient hook moves with it)."""
        module, attr, _ = self.owners[name][0]
        p = parameter_slot(module, attr)
        if p is None:
            raise RuntimeError(f"masked parameter {name!r} was removed from its module; call remove_masks(model, [{name!r}]) first")
        if self._hooked_params.get(name) is not p or (p.requires_grad and name not in self._grad_hooks):
            self._follow(name, p)
        return p

    # The version counter is read in this module only (here and in enforce_/force_), and inline there: Dynamo
    # compiles the forward pre-hook, and a helper call around ``_version`` doubles its graph breaks
    # (tests/test_scale.py counts the graphs). masks/optimizers.py reads it through these two methods.
    def unchanged(self, name: str) -> bool:
        """Whether ``name`` has had no in-place write (other than through ``.data``) since it was last masked."""
        return self.param(name)._version == self.versions.get(name)

    def note_clean(self, name: str) -> None:
        """Record ``name``'s current version as masked."""
        self.versions[name] = self.param(name)._version

    def _follow(self, name: str, p: nn.Parameter) -> None:
        old = self._grad_hooks.pop(name, None)
        if old is not None:
            old.remove()
        if p.requires_grad:  # a frozen tensor cannot take a gradient hook; it gets one once unfrozen
            self._grad_hooks[name] = p.register_post_accumulate_grad_hook(functools.partial(_mask_grad, self, name))
        self._hooked_params[name] = p

    def mask_on(self, name: str, device: torch.device) -> Tensor:
        """The pruned-entries mask of ``name`` on ``device`` (moved once and kept there, following the parameter)."""
        pruned = self.pruned[name]
        if pruned.device != device:
            pruned = self.pruned[name] = pruned.to(device)
        return pruned

    # --- enforcement --------------------------------------------------------------------------------
    def enforce_(self, names: Iterable[str] | None = None, force: bool = False) -> None:
        """Zero pruned entries of ``names`` (default: all) that changed since their last enforcement; all of them
        with ``force`` or when marked stale (those through ``.data``, with the optimizer state too)."""
        stale = self.stale
        forced: list[str] | None = None  # built only when needed: the common path allocates nothing
        for name in self.pruned if names is None else names:
            if force or (stale and name in stale):
                if forced is None:
                    forced = []
                forced.append(name)
                continue
            p = self.param(name)
            if p._version != self.versions.get(name):
                with torch.no_grad():
                    p.masked_fill_(self.mask_on(name, p.device), 0)
                self.versions[name] = p._version
        if forced:
            self.force_(forced)

    def force_(self, names: Iterable[str]) -> None:
        """Unconditional pass: weights through ``.data`` (no version bump) and the attached optimizers' state."""
        optimizers = [o for o in (ref() for ref in self._optimizers) if o is not None]
        with torch.no_grad():
            for name in names:
                p = self.param(name)
                p.data.masked_fill_(self.mask_on(name, p.device), 0)
                self.versions[name] = p._version
                self.stale.discard(name)
                for optimizer in optimizers:
                    _zero_state_entries_(optimizer.state.get(p), p, self.pruned[name])

    # --- hooks --------------------------------------------------------------------------------------
    def index_modules(self) -> None:
        """Rebuild ``module_names`` from ``owners`` (after masks were added or removed)."""
        index: dict[str, list[str]] = {}
        for name, held in self.owners.items():
            for _, _, key in held:
                index.setdefault(key, []).append(name)
        self.module_names = {key: tuple(names) for key, names in index.items()}

    def hook_module(self, key: str, module: nn.Module) -> list[RemovableHandle]:
        """Register the forward and state-dict pre-hooks of ``module`` (its names are read from ``module_names``)."""
        forward = module.register_forward_pre_hook(functools.partial(_enforce_before_forward, self, key))
        try:
            state_dict = module.register_state_dict_pre_hook(functools.partial(_enforce_before_state_dict, self, key))
        except BaseException:
            forward.remove()
            raise
        self.module_hooks[key] = (forward, state_dict)
        return [forward, state_dict]

    def unhook_module(self, key: str) -> None:
        for handle in self.module_hooks.pop(key, ()):
            handle.remove()

    def unhook_name(self, name: str) -> None:
        handle = self._grad_hooks.pop(name, None)
        if handle is not None:
            handle.remove()
        self._hooked_params.pop(name, None)

    def remove_hooks(self) -> None:
        """Remove every hook this state registered (gradient, module and optimizer hooks)."""
        for name in list(self._grad_hooks):
            self.unhook_name(name)
        self._hooked_params.clear()
        for key in list(self.module_hooks):
            self.unhook_module(key)
        self.detach_optimizers()

    def detach_optimizers(self) -> None:
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks.clear()
        self._optimizers.clear()

    # --- copy / pickle: gradient hooks and optimizers do not travel ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_grad_hooks"] = {}
        state["_hooked_params"] = {}
        state["_optimizer_hooks"] = []
        state["_optimizers"] = []
        state["_clean_before_step"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Modules may be half-built while a copy is made: gradient hooks are registered again lazily, by the first
        # enforcement (the next forward or state dict) through `param()`. Module hook handles are copied with the
        # modules' hook dicts, so they remove the copies' hooks.
        self.__dict__.update(state)


def _zero_state_entries_(p_state: Mapping[str, Any] | None, p: Tensor, pruned: Tensor) -> None:
    """Zero, at ``pruned``, every tensor of one parameter's optimizer state that has the parameter's shape."""
    if not p_state:
        return
    for value in p_state.values():
        if isinstance(value, Tensor) and value.shape == p.shape:
            value.masked_fill_(pruned if pruned.device == value.device else pruned.to(value.device), 0)


def _mask_grad(state: _MaskState, name: str, param: Tensor) -> None:
    if param.grad is not None and name in state.pruned:
        param.grad.masked_fill_(state.mask_on(name, param.grad.device), 0)


def _enforce_before_forward(state: _MaskState, key: str, module: nn.Module, args: Any) -> None:
    state.enforce_(state.module_names.get(key, ()))


def _enforce_before_state_dict(state: _MaskState, key: str, module: nn.Module, prefix: str, keep_vars: bool) -> None:
    state.force_(state.module_names.get(key, ()))


def _find_states(model: nn.Module) -> list[tuple[str, _MaskState]]:
    """Mask states on ``model`` or any submodule (e.g. under a DDP wrapper), with their name prefixes."""
    found = []
    for prefix, module in model.named_modules():
        state = module.__dict__.get(_STATE_ATTR)
        if state is not None:
            found.append((f"{prefix}." if prefix else "", state))
    return found


def _check_module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _protocol_masks(prefix: str, module: nn.Module) -> dict[str, Tensor]:
    """The masks a module reports through ``pruning_masks()``, checked, keyed by ``prefix + attr``."""
    reported = module.pruning_masks()
    where = f"{prefix[:-1] or 'the model'} ({type(module).__name__})"
    if not isinstance(reported, Mapping):
        raise TypeError(f"{where}.pruning_masks() must return a mapping {{attribute: bool tensor}}, got {type(reported).__name__}")
    out = {}
    for attr, mask in reported.items():
        if not isinstance(attr, str) or not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"{where}.pruning_masks() must map attribute names to torch.bool tensors; {attr!r} -> {got}")
        out[prefix + attr] = mask.detach().clone()
    return out


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks attached to ``model`` or any of its submodules, keyed by names relative to ``model``.

    Includes the masks of modules that implement the ``pruning_masks()`` protocol (module docstring), in the order
    of the modules in ``model.named_modules()``. Returns new ``torch.bool`` tensors (``True`` = kept) on the masks'
    devices; ``{}`` when there are none. Works through
    wrappers: ``get_masks(ddp_model)`` yields ``"module.<name>"`` keys.

    >>> from lightning_prune_init.masks import apply_masks
    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> _ = apply_masks(net, {"0.weight": torch.tensor([[True, False, True], [False, False, True]])})
    >>> {n: m.int().tolist() for n, m in get_masks(nn.Sequential(net)).items()}
    {'0.0.weight': [[1, 0, 1], [0, 0, 1]]}
    """
    _check_module(model)
    found: dict[str, Tensor] = {}
    position: dict[str, int] = {}  # module path -> its place in named_modules(), to list masks in model order
    for index, (path, module) in enumerate(model.named_modules()):
        position[path] = index
        prefix = f"{path}." if path else ""
        state = module.__dict__.get(_STATE_ATTR)
        if state is not None:
            found.update({prefix + name: ~pruned for name, pruned in state.pruned.items()})
        if callable(getattr(type(module), "pruning_masks", None)):
            found.update(_protocol_masks(prefix, module))
    order = sorted(found, key=lambda name: position.get(name.rpartition(".")[0], -1))  # stable within a module
    return {name: found[name] for name in order}


def enforce_masks_(model: nn.Module) -> nn.Module:
    """Zero every pruned entry now, whatever the version counters say; returns ``model``.

    Use it after writing through ``.data`` (the callback calls it at the end of a fit). Also zeroes the pruned
    entries of the attached optimizers' state. Cost: one ``masked_fill_`` per masked tensor (``docs/benchmarks.md``).

    >>> from lightning_prune_init.masks import apply_masks
    >>> net = nn.Linear(2, 2)
    >>> _ = apply_masks(net, {"weight": torch.tensor([[True, False], [True, True]])})
    >>> _ = net.weight.data.fill_(1.0)  # a `.data` write: the version counter does not move
    >>> enforce_masks_(net).weight.tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    for _, state in _find_states(_check_module(model)):
        state.force_(list(state.pruned))
    return model


def mark_masks_stale(model: nn.Module) -> nn.Module:
    """Make the next forward of each masked module force enforcement once; returns ``model``.

    For callers that cannot know whether something wrote through ``.data`` since the last forward (weight
    averaging swaps, EMA updates, user callbacks): the callback calls it at the start of every validation, test
    and predict epoch. Costs nothing now; the forced pass costs one ``masked_fill_`` per masked tensor at the next
    forward (or state dict), and nothing afterwards.

    >>> from lightning_prune_init.masks import apply_masks
    >>> net = nn.Linear(2, 2)
    >>> _ = apply_masks(net, {"weight": torch.tensor([[True, False], [True, True]])})
    >>> _ = mark_masks_stale(net).weight.data.fill_(1.0)  # written through `.data` after the mark ...
    >>> _ = net(torch.zeros(1, 2))  # ... and zeroed by the next forward
    >>> net.weight.tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    for _, state in _find_states(_check_module(model)):
        state.stale.update(state.pruned)
    return model
