"""Edits of a module's parameter table (``nn.Module._parameters``), the one PyTorch internal this package edits,
in one place. (The other, a tensor's version counter, is read in masks/hooks.py only.)

Sparse execution swaps a layer's ``weight`` Parameter for another at the same position, so ``named_parameters()``
and optimizer groups keep their order (sparse/linear.py, sparse/semi_structured.py); the masks look a masked
Parameter up in its module's own table (masks/hooks.py).

>>> import torch
>>> layer = torch.nn.Linear(2, 2)
>>> replace_parameter_(layer, "weight", "values", torch.nn.Parameter(torch.zeros(3)))
>>> [name for name, _ in layer.named_parameters()]
['values', 'bias']
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["insert_parameter_first_", "parameter_slot", "remove_parameter_", "replace_parameter_"]


def parameter_slot(module: nn.Module, name: str) -> nn.Parameter | None:
    """``module``'s own Parameter registered as ``name`` (not a property, not a submodule's), or ``None``."""
    return module._parameters.get(name)


def replace_parameter_(module: nn.Module, old: str, new: str, param: nn.Parameter) -> None:
    """Register ``param`` as ``new`` at the position of ``old`` in ``module``'s parameters (the order stays)."""
    items = [(new, param) if name == old else (name, p) for name, p in module._parameters.items()]
    module._parameters.clear()
    module._parameters.update(items)


def remove_parameter_(module: nn.Module, name: str) -> nn.Parameter | None:
    """Unregister ``module``'s Parameter ``name`` and return it."""
    return module._parameters.pop(name)


def insert_parameter_first_(module: nn.Module, name: str, param: nn.Parameter) -> None:
    """Register ``param`` as ``name`` before ``module``'s other parameters (``weight`` before ``bias``)."""
    rest = dict(module._parameters)
    module._parameters.clear()
    module._parameters.update({name: param, **rest})
