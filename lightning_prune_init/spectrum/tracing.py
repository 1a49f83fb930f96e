"""Which layers the spectra report, and the layerwise Jacobians traced through the model's real forward code.

Layers
    One per weight matrix of the selection (:class:`~lightning_prune_init.parameters.ParameterSelection`), named by
    the module that applies it: ``"features.0"`` for ``"features.0.weight"``; ``"attn.in_proj_weight"`` for a
    parameter other than ``weight``. A tied tensor is named by the module that uses it as a linear map (a language
    model head ``lm_head`` tied to its embedding is the layer ``lm_head``).
Layerwise Jacobians
    For each example, ``∂ x_next / ∂ x_l``: the input of the *next* selected layer with respect to the input of
    layer ``l``, everything not downstream of ``x_l`` held at its value. "Next" is the first selected layer, in
    execution order, whose input depends on ``x_l``; the last such layer is paired with the model output; a layer
    with no downstream path is left out. Only the first call of a module counts; its input is its first tensor
    argument (positional, else keyword).

>>> import torch
>>> from lightning_prune_init.parameters import select_parameters
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
>>> list(selected_layers(net, select_parameters(net)))
['0', '2']
>>> x = torch.randn(5, 4)
>>> layerwise_pairs(net, x, None, {"0": net[0], "2": net[2]}, ["0", "2"])
{'0': '2', '2': None}
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init.layouts import MatrixLayout, layout_of
from lightning_prune_init.parameters import ParameterSelection, SelectedParameter
from lightning_prune_init.spectrum.calls import ForwardFn, Probe, call_model, slice_batch

__all__ = ["Layer", "layerwise_function", "layerwise_pairs", "select_keys", "selected_layers", "trace_inputs"]


@dataclass(frozen=True)
class Layer:
    """A selected weight matrix as a layer of the spectra.

    Attributes:
        key: the name results are reported under (module docstring).
        parameter: the tensor's name in the selection (masks are keyed by it).
        module_name: the module that applies it (``""``: the model itself).
        module: that module.
        layout: how the tensor reads as matrices ``[groups, rows, cols]``.
    """

    key: str
    parameter: str
    module_name: str
    module: nn.Module
    layout: MatrixLayout


def _applying_module(model: nn.Module, entry: SelectedParameter) -> tuple[str, nn.Module, str]:
    """``(module name, module, attribute)`` of the name under which the tensor is used as ``entry.layout`` says."""
    found = []
    for name in entry.names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        found.append((module_name, module, attr))
        if layout_of(module, attr, getattr(module, attr)).kind == entry.layout.kind:
            return found[-1]
    return found[0]


def selected_layers(model: nn.Module, selection: ParameterSelection) -> dict[str, Layer]:
    """``{key: Layer}`` for every weight matrix (at least 2 dimensions) of ``selection``, in selection order."""
    layers: dict[str, Layer] = {}
    for name, entry in selection.matrices().items():
        module_name, module, attr = _applying_module(model, entry)
        key = module_name if attr == "weight" and module_name else f"{module_name}.{attr}".lstrip(".")
        layers.setdefault(key, Layer(key, name, module_name, module, entry.layout))
    return layers


def select_keys(keys: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """The keys matching one of the glob ``patterns`` (all keys for ``None``), in their order.

    Raises:
        ValueError: a pattern matches no key (the message lists them).

    >>> select_keys(["net.0", "net.2", "head"], ["net.*"])
    ['net.0', 'net.2']
    """
    if patterns is None:
        return list(keys)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in keys):
            raise ValueError(f"`layers` pattern {pattern!r} matches no selected layer; layers are: {', '.join(keys)}")
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]


class _StopForward(Exception):
    """Raised by a hook once the wanted activation is captured: the rest of the forward is not needed."""


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int | str, Tensor] | None:
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            return i, a
    for k, a in kwargs.items():
        if isinstance(a, Tensor):
            return k, a
    return None


def _replace_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], where: int | str, value: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(where, int):
        return args[:where] + (value,) + args[where + 1 :], kwargs
    return args, {**kwargs, where: value}


def _hooked(model: nn.Module, batch: Probe, forward_fn: ForwardFn | None, hooks: dict[nn.Module, Callable]) -> Tensor:
    handles = [m.register_forward_pre_hook(h, with_kwargs=True) for m, h in hooks.items()]
    try:
        return call_model(model, batch, forward_fn)
    finally:
        for handle in handles:
            handle.remove()


def trace_inputs(
    model: nn.Module, batch: Probe, forward_fn: ForwardFn | None, modules: dict[str, nn.Module]
) -> tuple[list[str], dict[str, Tensor]]:
    """Run the model once: the keys of ``modules`` in the order their modules first run, and their first inputs
    (detached copies)."""
    order: list[str] = []
    captured: dict[str, Tensor] = {}

    def make(key: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            first = _first_input(args, kwargs)
            if key not in captured and first is not None:
                captured[key] = first[1].detach().clone()
                order.append(key)

        return hook

    _hooked(model, batch, forward_fn, {m: make(k) for k, m in modules.items()})
    return order, captured


def layerwise_pairs(
    model: nn.Module,
    batch: Probe,
    forward_fn: ForwardFn | None,
    modules: dict[str, nn.Module],
    wanted: Sequence[str],
) -> dict[str, str | None]:
    """For each wanted key, the key of the next layer (``None``: the output), from one forward on the first example.

    The input of every layer is replaced by a fresh leaf: the input of a later layer ``k`` depends on the leaf of
    ``l`` iff a path joins them without crossing another layer's input. The first dependent layer in execution
    order always has such a path (whatever feeds it from ``l`` through another layer ``j`` makes ``j`` dependent
    and earlier), so this finds the same "next" layer as a search over all paths. Layers with no path to any later
    layer nor to the output are left out.
    """
    leaves: dict[str, Tensor] = {}
    seen: dict[str, Tensor] = {}
    order: list[str] = []

    def make(key: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            first = _first_input(args, kwargs)
            if key in leaves or first is None:
                return None
            seen[key] = first[1]
            leaves[key] = leaf = first[1].detach().requires_grad_(True)
            order.append(key)
            return _replace_input(args, kwargs, first[0], leaf)

        return hook

    with torch.enable_grad():
        out = _hooked(model, slice_batch(batch, slice(0, 1)), forward_fn, {m: make(k) for k, m in modules.items()})
        inputs = [leaves[k] for k in order]

        def depends_on(target: Tensor) -> set[str]:
            if not target.requires_grad:
                return set()
            grads = torch.autograd.grad(target.sum(), inputs, allow_unused=True, retain_graph=True)
            return {k for k, g in zip(order, grads) if g is not None}

        deps = {k: depends_on(seen[k]) for k in order}
        out_deps = depends_on(out)
    pairs: dict[str, str | None] = {}
    for i, key in enumerate(order):
        if key not in wanted:
            continue
        nxt = next((k for k in order[i + 1 :] if key in deps[k]), False)
        if nxt is False and key in out_deps:
            nxt = None
        if nxt is not False:
            pairs[key] = nxt  # type: ignore[assignment]
    return pairs


def layerwise_function(
    model: nn.Module, batch: Probe, forward_fn: ForwardFn | None, layer: nn.Module, nxt: nn.Module | None
) -> Callable[[Tensor], Tensor]:
    """``fn(z)``, batched: the next layer's first input (or the output) when ``layer``'s first input is ``z``; the
    forward stops as soon as the next layer's input is known."""

    def fn(z: Tensor) -> Tensor:
        state = {"replaced": False}
        captured: list[Tensor] = []

        def replace(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            first = _first_input(args, kwargs)
            if state["replaced"] or first is None:
                return None
            state["replaced"] = True
            return _replace_input(args, kwargs, first[0], z)

        def capture(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            first = _first_input(args, kwargs)
            if state["replaced"] and not captured and first is not None:
                captured.append(first[1])
                raise _StopForward

        hooks: dict[nn.Module, Callable] = {layer: replace}
        if nxt is not None:
            hooks[nxt] = capture
        try:
            return _hooked(model, batch, forward_fn, hooks)
        except _StopForward:
            return captured[0]

    return fn
