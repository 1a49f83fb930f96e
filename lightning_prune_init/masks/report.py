"""Sparsity reports: kept and total entries per masked tensor and overall (``density = kept / total``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init._tables import format_table
from lightning_prune_init.masks.hooks import get_masks
from lightning_prune_init.parameters import ParameterSelection

__all__ = ["LayerDensity", "SparsityReport", "sparsity_report"]


@dataclass(frozen=True)
class LayerDensity:
    """Kept and total entries of one masked tensor; ``aliases`` are its other names when it is tied.

    >>> LayerDensity("fc.weight", kept=25, total=100).density
    0.25
    """

    name: str
    kept: int
    total: int
    aliases: tuple[str, ...] = ()

    @property
    def density(self) -> float:
        """``kept / total`` (0 for an empty tensor)."""
        return self.kept / self.total if self.total else 0.0

    @property
    def label(self) -> str:
        """The name as reports show it: ``"transformer.wte.weight (also lm_head.weight)"`` for a tied tensor."""
        return self.name + (f" (also {', '.join(self.aliases)})" if self.aliases else "")


@dataclass(frozen=True)
class SparsityReport:
    """Per-tensor and overall density of a set of masks (``density = kept / total``, ``sparsity = 1 - density``).

    >>> report = sparsity_report({"a": torch.tensor([True, False]), "b": torch.tensor([True, True, False, False])})
    >>> print(report)
    parameter  kept  total  density
    ---------  ----  -----  -------
    a             1      2   50.00%
    b             2      4   50.00%
    total         3      6   50.00%
    """

    layers: dict[str, LayerDensity] = field(default_factory=dict)
    #: kept entries over all tensors (a tied tensor counted once); computed from ``layers``
    kept: int = field(init=False)
    #: entries over all tensors; computed from ``layers``
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kept", sum(layer.kept for layer in self.layers.values()))
        object.__setattr__(self, "total", sum(layer.total for layer in self.layers.values()))

    @property
    def density(self) -> float:
        """``kept / total`` (0 when there is nothing)."""
        return self.kept / self.total if self.total else 0.0

    def collapsed(self) -> list[str]:
        """Names of tensors with no kept entry."""
        return [name for name, layer in self.layers.items() if layer.kept == 0]

    @property
    def sparsity(self) -> float:
        """``1 - density``."""
        return 1.0 - self.density

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON and ``torch.load(weights_only=True)`` safe); a tied tensor's entry lists its aliases."""

        def layer(x: LayerDensity) -> dict[str, Any]:
            out: dict[str, Any] = {"kept": x.kept, "total": x.total, "density": x.density}
            if x.aliases:
                out["aliases"] = list(x.aliases)
            return out

        return {
            "kept": self.kept,
            "total": self.total,
            "density": self.density,
            "layers": {n: layer(x) for n, x in self.layers.items()},
        }

    def metrics(self, prefix: str = "prune") -> dict[str, float]:
        """Flat scalars for a logger: ``<prefix>/density``, ``<prefix>/sparsity``, ``<prefix>/density/<layer>``."""
        out = {f"{prefix}/density": self.density, f"{prefix}/sparsity": self.sparsity}
        for name, layer in self.layers.items():
            out[f"{prefix}/density/{name}"] = layer.density
        return out

    def __str__(self) -> str:
        rows = [[x.label, f"{x.kept:,}", f"{x.total:,}", f"{x.density:.2%}"] for x in self.layers.values()]
        rows.append(["total", f"{self.kept:,}", f"{self.total:,}", f"{self.density:.2%}"])
        return format_table(["parameter", "kept", "total", "density"], rows)


def sparsity_report(
    masks_or_model: Mapping[str, Tensor] | nn.Module, parameters: ParameterSelection | None = None
) -> SparsityReport:
    """Density per masked tensor and overall, from a mask dict or from the masks attached to a model.

    Args:
        masks_or_model: ``{name: bool tensor}`` (``True`` = kept), or a module whose attached masks are read
            (:func:`~lightning_prune_init.masks.hooks.get_masks`, modules with ``pruning_masks()`` included).
        parameters: the selection the masks were made for; rows of tied tensors then name their aliases
            (``"transformer.wte.weight (also lm_head.weight)"``).

    >>> lin = nn.Linear(4, 4)
    >>> tied = nn.ModuleDict({"emb": nn.Embedding(4, 4), "head": lin})
    >>> tied.emb.weight = lin.weight
    >>> from lightning_prune_init.parameters import select_parameters
    >>> sel = select_parameters(tied, include="*.weight")
    >>> sparsity_report({"emb.weight": torch.eye(4, dtype=torch.bool)}, sel).layers["emb.weight"].label
    'emb.weight (also head.weight)'
    """
    if parameters is not None and not isinstance(parameters, ParameterSelection):
        raise TypeError(
            "`parameters` must be a ParameterSelection (select_parameters(model, ...)) or None, got "
            f"{type(parameters).__name__}"
        )
    if isinstance(masks_or_model, nn.Module):
        masks = get_masks(masks_or_model)
    elif isinstance(masks_or_model, Mapping):
        masks = masks_or_model
    else:
        raise TypeError(f"`masks_or_model` must be a mapping of bool masks or a module, got {type(masks_or_model).__name__}")
    layers = {}
    for name, mask in masks.items():
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask {name!r} must be a torch.bool tensor (True = kept), got {type(mask).__name__}")
        aliases: tuple[str, ...] = ()
        if parameters is not None and name in parameters:
            entry = parameters.entry(name)
            aliases = tuple(n for n in entry.names if n != name)
        layers[name] = LayerDensity(name, int(torch.count_nonzero(mask)), mask.numel(), aliases)
    return SparsityReport(layers)
