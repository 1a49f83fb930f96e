"""Attach, read and remove pruning masks; pack them for checkpoints; report sparsity.

How a mask is enforced (DESIGN.md, "Masks"):

* The ``nn.Parameter`` objects stay the same objects under the same names, so optimizers, DDP and
  ``named_parameters()`` keep working, and the model's ``state_dict`` keeps its plain keys. Pruned entries
  hold exact zeros; the masks themselves are not model state.
* Gradients: a post-accumulate-grad hook on each masked parameter zeroes the pruned entries of ``.grad``
  in place, as soon as the gradient is accumulated, so optimizer state (momentum, Adam moments) never
  becomes non-zero for them and gradient clipping sees the masked gradient.
* Weights: pruned entries are zeroed (``masked_fill_``) by a forward pre-hook on the owning module and by
  a step post-hook on each optimizer handed to :func:`apply_masks` (the callback hands the Trainer's).
  Both only act when the parameter's version counter moved since the last enforcement, so a model that
  runs two forward passes before one backward never has a saved tensor modified under autograd.
* Elementwise optimizers (``torch.optim`` SGD, Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad,
  Adadelta, exactly these classes) give an entry whose gradient, state and weight are 0 an update of exactly
  0. After their step, a parameter that nobody else changed since its last enforcement (checked by a step
  pre-hook on the version counter) is known to be clean: its new version is recorded, no pass over the
  weights is needed. Any other optimizer (Shampoo-like preconditioners mix entries) gets the full re-zeroing.

State lives in a small object stored on the module the masks were applied to (not a submodule, not a
buffer): it survives ``copy.deepcopy`` and pickling; a copy registers its gradient hooks again at its first forward.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

_STATE_ATTR = "_prune_init_masks"
_PACK_FORMAT = "bitpacked-v1"


class _MaskState:
    """Masks of one module and the hooks that enforce them. Internal: use the module-level functions."""

    def __init__(self) -> None:
        self.pruned: dict[str, Tensor] = {}  # name -> bool, True where the entry is pruned
        self.owners: dict[str, tuple[nn.Module, str]] = {}  # name -> (owning module, attribute)
        self.module_names: dict[str, str] = {}  # name -> owning module's qualified name
        self.versions: dict[str, int] = {}
        self.forward_hook_ids: dict[str, tuple[nn.Module, int]] = {}  # module name -> (module, hook id)
        self._grad_hooks: dict[str, Any] = {}
        self._hooked_params: dict[str, nn.Parameter] = {}
        self._optimizer_hooks: list[Any] = []
        self._clean_before_step: set[str] = set()

    # --- enforcement -------------------------------------------------------------------------------
    def param(self, name: str) -> nn.Parameter:
        module, attr = self.owners[name]
        p = module._parameters[attr]
        if p is None:
            raise RuntimeError(f"masked parameter {name!r} was removed from its module")
        if self._hooked_params.get(name) is not p:  # the Parameter object was replaced: follow it
            self._register_grad_hook(name, p)
        return p

    def mask_on(self, name: str, device: torch.device) -> Tensor:
        pruned = self.pruned[name]
        if pruned.device != device:
            pruned = self.pruned[name] = pruned.to(device)
        return pruned

    @torch.no_grad()
    def enforce_(self, names: Iterable[str] | None = None, force: bool = False) -> None:
        for name in self.pruned if names is None else names:
            p = self.param(name)
            if force or p._version != self.versions.get(name):
                p.masked_fill_(self.mask_on(name, p.device), 0)
                self.versions[name] = p._version

    def _register_grad_hook(self, name: str, p: nn.Parameter) -> None:
        old = self._grad_hooks.pop(name, None)
        if old is not None:
            old.remove()
        self._grad_hooks[name] = p.register_post_accumulate_grad_hook(functools.partial(_mask_grad, self, name))
        self._hooked_params[name] = p

    def remove_hooks(self) -> None:
        for handle in self._grad_hooks.values():
            handle.remove()
        self._grad_hooks.clear()
        self._hooked_params.clear()
        for module, hook_id in self.forward_hook_ids.values():
            module._forward_pre_hooks.pop(hook_id, None)
        self.forward_hook_ids.clear()
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks.clear()

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        names = tuple(n for n in self.pruned if id(self.param(n)) in ids)
        trusted = type(optimizer) in _ELEMENTWISE_OPTIMIZERS
        self._optimizer_hooks.append(optimizer.register_step_pre_hook(functools.partial(_before_step, self, names)))
        self._optimizer_hooks.append(
            optimizer.register_step_post_hook(functools.partial(_after_step, self, names, trusted))
        )
        zero_optimizer_state_(optimizer, self)

    def after_step(self, names: tuple[str, ...], trusted: bool) -> None:
        """Re-zero after an optimizer step; trust an elementwise optimizer's step on parameters clean before it."""
        if not trusted:
            self.enforce_()
            return
        for name in names:
            if name in self._clean_before_step:
                self.versions[name] = self.param(name)._version
            else:
                self.enforce_((name,))
        self.enforce_(n for n in self.pruned if n not in names)

    # --- copy / pickle: hook handles do not travel, the hooks are registered again --------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_grad_hooks"] = {}
        state["_hooked_params"] = {}
        state["_optimizer_hooks"] = []
        state["_clean_before_step"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Modules may be half-built while a copy is being made: the gradient hooks are registered again
        # lazily, by the first enforcement (the owning module's next forward) through `param()`.
        self.__dict__.update(state)


def _mask_grad(state: _MaskState, name: str, param: Tensor) -> None:
    if param.grad is not None:
        param.grad.masked_fill_(state.mask_on(name, param.grad.device), 0)


def _enforce_before_forward(state: _MaskState, names: tuple[str, ...], module: nn.Module, args: Any) -> None:
    state.enforce_(names)


def _before_step(state: _MaskState, names: tuple[str, ...], optimizer: Any, args: Any, kwargs: Any) -> None:
    state._clean_before_step = {n for n in names if state.param(n)._version == state.versions.get(n)}


def _after_step(state: _MaskState, names: tuple[str, ...], trusted: bool, optimizer: Any, args: Any, kwargs: Any) -> None:
    state.after_step(names, trusted)


_ELEMENTWISE_OPTIMIZERS = (
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


@torch.no_grad()
def zero_optimizer_state_(optimizer: torch.optim.Optimizer, state: _MaskState) -> None:
    """Zero the pruned entries of every per-parameter optimizer state tensor shaped like the parameter."""
    by_param = {id(state.param(name)): name for name in state.pruned}
    for p, p_state in optimizer.state.items():
        name = by_param.get(id(p))
        if name is None:
            continue
        for value in p_state.values():
            if isinstance(value, Tensor) and value.shape == p.shape:
                value.masked_fill_(state.mask_on(name, value.device), 0)


def _find_states(model: nn.Module) -> list[tuple[str, _MaskState]]:
    """Mask states on ``model`` or any submodule (e.g. under a DDP wrapper), with their name prefixes."""
    found = []
    for prefix, module in model.named_modules():
        state = module.__dict__.get(_STATE_ATTR)
        if state is not None:
            found.append((f"{prefix}." if prefix else "", state))
    return found


def _validate_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, nn.Parameter]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(masks, Mapping):
        raise TypeError(f"`masks` must be a mapping of parameter name to bool tensor, got {type(masks).__name__}")
    if not masks:
        raise ValueError("`masks` is empty: nothing to apply")
    params = dict(model.named_parameters())
    selected = {}
    for name, mask in masks.items():
        if name not in params:
            close = [n for n in params if n.endswith(name) or name.endswith(n)]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"mask key {name!r} is not a parameter of {type(model).__name__}: keys must be the names "
                f"`model.named_parameters()` yields{hint}"
            )
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask {name!r} must be a torch.bool tensor (True = kept), got {got}")
        if mask.shape != params[name].shape:
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask.shape)}, its parameter has {tuple(params[name].shape)}"
            )
        selected[name] = params[name]
    return selected


def _owner(model: nn.Module, name: str) -> tuple[str, nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return module_name, (model.get_submodule(module_name) if module_name else model), attr


def apply_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> nn.Module:
    """Attach boolean masks to ``model`` and enforce them from now on; returns ``model``.

    Pruned entries (``False`` in the mask) are set to exactly 0 at once, their gradients are zeroed as they
    are accumulated, and they are zeroed again before any forward of the owning module and after any step
    of the given optimizers, when the parameter changed since the last enforcement. Applying masks to a
    model that already has some replaces the masks of the same names and keeps the others.

    Args:
        model: the module; its Parameters stay the same objects under the same names.
        masks: ``{name: bool tensor}`` keyed by ``model.named_parameters()`` names, each of its parameter's
            shape, ``True`` = kept. The tensors are copied (to the parameter's device).
        optimizers: optimizers already holding these parameters: their per-parameter state (momentum, Adam
            moments) is zeroed at pruned entries now, and a step post-hook re-zeroes pruned weights after
            every step, so the zeros hold after each step whatever the optimizer does.

    Raises:
        TypeError / ValueError: a key that is not a parameter name, a non-bool mask, a shape mismatch. The
            model is left untouched.
    """
    selected = _validate_masks(model, masks)
    state = model.__dict__.get(_STATE_ATTR)
    if state is None:
        state = _MaskState()
        model.__dict__[_STATE_ATTR] = state

    touched: dict[str, nn.Module] = {}
    for name, p in selected.items():
        module_name, module, attr = _owner(model, name)
        state.pruned[name] = ~masks[name].to(device=p.device)  # `~` makes the copy: one new bool tensor
        state.owners[name] = (module, attr)
        state.module_names[name] = module_name
        state.versions.pop(name, None)
        touched[module_name] = module
        state._register_grad_hook(name, p)
        if p.grad is not None:
            p.grad.masked_fill_(state.pruned[name], 0)
    for module_name, module in touched.items():  # one pre-hook per module, covering all its masked names
        old = state.forward_hook_ids.pop(module_name, None)
        if old is not None:
            old[0]._forward_pre_hooks.pop(old[1], None)
        names = tuple(n for n, m in state.module_names.items() if m == module_name)
        handle = module.register_forward_pre_hook(functools.partial(_enforce_before_forward, state, names))
        state.forward_hook_ids[module_name] = (module, handle.id)
    state.enforce_(selected, force=True)
    for optimizer in optimizers:
        state.attach_optimizer(optimizer)
    return model


def attach_optimizers(model: nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Zero the optimizers' state at pruned entries and re-zero pruned weights after each of their steps.

    Does nothing for a model without masks. Idempotent per optimizer is not guaranteed: call it once per
    optimizer (the callback calls it once per fit and detaches in :func:`detach_optimizers`).
    """
    for _, state in _find_states(model):
        for optimizer in optimizers:
            state.attach_optimizer(optimizer)


def detach_optimizers(model: nn.Module) -> None:
    """Remove the optimizer step hooks registered by :func:`apply_masks` / :func:`attach_optimizers`."""
    for _, state in _find_states(model):
        for handle in state._optimizer_hooks:
            handle.remove()
        state._optimizer_hooks.clear()


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks attached to ``model`` (or to any of its submodules), keyed by names relative to ``model``.

    Returns new ``torch.bool`` tensors (``True`` = kept) on the parameters' devices; ``{}`` when no masks
    are attached. Works through wrappers: ``get_masks(ddp_model)`` yields ``"module.<name>"`` keys.
    """
    return {
        prefix + name: ~pruned for prefix, state in _find_states(model) for name, pruned in state.pruned.items()
    }


def enforce_masks_(model: nn.Module) -> nn.Module:
    """Zero every pruned entry now, whatever the version counters say (e.g. after editing ``.data``)."""
    for _, state in _find_states(model):
        state.enforce_(force=True)
    return model


def remove_masks(model: nn.Module) -> dict[str, Tensor]:
    """Detach all masks and hooks, leaving a plain model with the zeros baked in; returns the masks.

    The model is then an ordinary ``nn.Module``: pruned entries are 0 now but may change in later training.
    """
    masks = {}
    for prefix, module in model.named_modules():
        state = module.__dict__.get(_STATE_ATTR)
        if state is None:
            continue
        state.enforce_(force=True)
        masks.update({prefix + ("." if prefix else "") + n: ~m for n, m in state.pruned.items()})
        state.remove_hooks()
        del module.__dict__[_STATE_ATTR]
    return masks


def to_torch_prune(model: nn.Module) -> nn.Module:
    """Convert to ``torch.nn.utils.prune`` format (``weight_orig`` + ``weight_mask``), for tools expecting it.

    The package's hooks are removed first; ``torch.nn.utils.prune.custom_from_mask`` is then applied to
    each masked parameter. Returns ``model``.
    """
    from torch.nn.utils import prune

    masks = remove_masks(model)
    for name, mask in masks.items():
        _, module, attr = _owner(model, name)
        prune.custom_from_mask(module, attr, mask)
    return model


# --- checkpoint format -------------------------------------------------------------------------------
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_masks(masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """Bit-pack bool masks (8 entries per byte, on CPU) for a checkpoint; inverse of :func:`unpack_masks`."""
    packed = {}
    for name, mask in masks.items():
        flat = mask.detach().reshape(-1).to("cpu", torch.uint8)
        pad = (-flat.numel()) % 8
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        bits = (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)
        packed[name] = {"shape": tuple(mask.shape), "bits": bits}
    return {"format": _PACK_FORMAT, "masks": packed}


def unpack_masks(packed: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Restore the bool masks written by :func:`pack_masks`."""
    if packed.get("format") != _PACK_FORMAT:
        raise ValueError(f"unknown mask format {packed.get('format')!r}; expected {_PACK_FORMAT!r}")
    masks = {}
    for name, entry in packed["masks"].items():
        shape = tuple(entry["shape"])
        numel = 1
        for s in shape:
            numel *= s
        bits = entry["bits"].to("cpu", torch.uint8)
        flat = (bits.unsqueeze(1) & _BIT_WEIGHTS).ne(0).reshape(-1)[:numel]
        masks[name] = flat.reshape(shape).to(device) if device is not None else flat.reshape(shape)
    return masks


# --- reporting ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerDensity:
    """Kept and total entries of one masked parameter."""

    name: str
    kept: int
    total: int

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-parameter and overall density of a set of masks (``density = kept / total``)."""

    layers: dict[str, LayerDensity] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers.values())

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def collapsed(self) -> list[str]:
        """Names of parameters with no kept entry."""
        return [name for name, layer in self.layers.items() if layer.kept == 0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "total": self.total,
            "density": self.density,
            "layers": {n: {"kept": x.kept, "total": x.total, "density": x.density} for n, x in self.layers.items()},
        }

    def metrics(self, prefix: str = "prune") -> dict[str, float]:
        """Flat scalars for a logger: ``<prefix>/density``, ``<prefix>/sparsity``, ``<prefix>/density/<layer>``."""
        out = {f"{prefix}/density": self.density, f"{prefix}/sparsity": self.sparsity}
        for name, layer in self.layers.items():
            out[f"{prefix}/density/{name}"] = layer.density
        return out

    def __str__(self) -> str:
        width = max([len("parameter")] + [len(n) for n in self.layers])
        lines = [f"{'parameter':<{width}}  {'kept':>10}  {'total':>10}  {'density':>8}"]
        for name, layer in self.layers.items():
            lines.append(f"{name:<{width}}  {layer.kept:>10,}  {layer.total:>10,}  {layer.density:>8.2%}")
        lines.append(f"{'total':<{width}}  {self.kept:>10,}  {self.total:>10,}  {self.density:>8.2%}")
        return "\n".join(lines)


def sparsity_report(masks_or_model: Mapping[str, Tensor] | nn.Module) -> SparsityReport:
    """Density per masked parameter and overall, from a mask dict or from the masks attached to a model."""
    masks = get_masks(masks_or_model) if isinstance(masks_or_model, nn.Module) else masks_or_model
    return SparsityReport({n: LayerDensity(n, int(torch.count_nonzero(m)), m.numel()) for n, m in masks.items()})
