"""Layer collapse and dead units: masks that cut the signal, found and reported before training.

A tensor with no kept entry is *pruned entirely*. An output unit (row ``i`` of a linear weight ``[out, in]``,
output channel ``i`` of a conv weight ``[c_out, c_in, ...]``) whose incoming weights are all pruned is *dead*:
it outputs a constant (its bias) whatever its input. :func:`find_collapse` finds both; :func:`check_collapse`
and :func:`check_masks` warn or raise about them according to a policy (``"warn"``, ``"error"``, ``"ignore"``).

>>> import torch
>>> found = find_collapse({"fc.weight": torch.tensor([[True, False], [False, False]])})
>>> found.pruned_entirely, found.dead_units
([], {'fc.weight': 1})
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Collapse",
    "CollapsePolicy",
    "LayerCollapseError",
    "LayerCollapseWarning",
    "check_collapse",
    "check_masks",
    "find_collapse",
]

CollapsePolicy = Literal["warn", "error", "ignore"]


class LayerCollapseError(ValueError):
    """A parameter would be pruned entirely, or a unit keeps no input (raised when ``on_layer_collapse="error"``).

    >>> check_collapse({"w": torch.zeros(2, dtype=torch.bool)}, "error")
    Traceback (most recent call last):
    ...
    lightning_prune_init.selection.collapse.LayerCollapseError: 1 parameter(s) would be pruned entirely: w. The network cannot pass a signal through them. Lower `sparsity`, use scope='layerwise' or `min_density`, exclude them with `exclude`, or initialize for isometry (init='orthogonal') before scoring
    """


class LayerCollapseWarning(UserWarning):
    """A parameter is pruned entirely, or a unit keeps no input (``on_layer_collapse="warn"``, the default).

    >>> issubclass(LayerCollapseWarning, UserWarning)
    True
    """


class Collapse(NamedTuple):
    """What :func:`find_collapse` found: tensors with no kept entry, and weights with dead output units.

    >>> Collapse(["a"], {"b": 2}).names()
    ['a', 'b']
    """

    pruned_entirely: list[str]
    dead_units: dict[str, int]  # name -> number of output units (rows / output channels) with no kept input

    def names(self) -> list[str]:
        """Every name with a collapse of either kind, tensors pruned entirely first."""
        return self.pruned_entirely + [n for n in self.dead_units if n not in self.pruned_entirely]


def find_collapse(masks: Mapping[str, Tensor], *, units: bool = True) -> Collapse:
    """Tensors with no kept entry, and (``units=True``) output units with no kept input weight.

    An output unit is row ``i`` of a mask with at least 2 dimensions (``[out, in]`` linear,
    ``[c_out, c_in, *kernel]`` conv). Tensors pruned entirely are not counted again as dead units; 1-D masks
    (biases) have no units.

    >>> find_collapse({"b": torch.zeros(3, dtype=torch.bool)})
    Collapse(pruned_entirely=['b'], dead_units={})
    """
    entirely = [name for name, m in masks.items() if m.numel() > 0 and not bool(m.any())]
    dead: dict[str, int] = {}
    if units:
        for name, m in masks.items():
            if m.dim() >= 2 and m.numel() > 0 and name not in entirely:
                n_dead = int((~m.reshape(m.shape[0], -1).any(dim=1)).sum())
                if n_dead:
                    dead[name] = n_dead
    return Collapse(entirely, dead)


def check_collapse(masks: Mapping[str, Tensor], policy: CollapsePolicy = "warn", *, units: bool = True) -> list[str]:
    """Names of masks with no kept entry, then of weights with dead output units (``units=True``); warn or raise
    about them according to ``policy`` (one message for both kinds).

    Raises:
        LayerCollapseError: with ``policy="error"``, when anything collapsed.

    >>> check_collapse({"fc.weight": torch.ones(2, 2, dtype=torch.bool)}, "error")
    []
    """
    found = find_collapse(masks, units=units)
    parts = []
    if found.pruned_entirely:
        parts.append(
            f"{len(found.pruned_entirely)} parameter(s) would be pruned entirely: {', '.join(found.pruned_entirely)}. "
            "The network cannot pass a signal through them."
        )
    if found.dead_units:
        listed = ", ".join(f"{n} ({k} of {masks[n].shape[0]})" for n, k in found.dead_units.items())
        parts.append(
            f"{sum(found.dead_units.values())} output unit(s) would keep no input weight: {listed}. Each such unit "
            "outputs a constant, whatever its input."
        )
    if parts and policy != "ignore":
        message = " ".join(parts) + (
            " Lower `sparsity`, use scope='layerwise' or `min_density`, exclude them with `exclude`, or initialize "
            "for isometry (init='orthogonal') before scoring"
        )
        if policy == "error":
            raise LayerCollapseError(message)
        warnings.warn(message, LayerCollapseWarning, stacklevel=3)
    return found.names()


def check_masks(
    masks: Mapping[str, Tensor], on_layer_collapse: CollapsePolicy = "warn", on_dead_units: CollapsePolicy = "ignore"
) -> Collapse:
    """Apply the two collapse policies to ``masks`` (tensors pruned entirely; dead output units); returns what
    :func:`find_collapse` found.

    >>> check_masks({"fc.weight": torch.tensor([[True], [False]])}).dead_units
    {'fc.weight': 1}
    """
    found = find_collapse(masks)
    check_collapse(masks, on_layer_collapse, units=False)
    if found.dead_units:
        check_collapse({name: masks[name] for name in found.dead_units}, on_dead_units)
    return found
