"""What a criterion is told besides the model, the batches and the selection: one frozen :class:`ScoringContext`.

The context carries the loss (built once by :func:`~lightning_prune_init.scoring.losses.make_loss`), the
settings of the mask selection that follows (sparsity, scope, minimum density, inversion, N:M pattern), the
reduction over data-parallel ranks, the generator of random criteria and the criterion's own options. Every
value is checked when the context is made, so a criterion can rely on them.

>>> ctx = ScoringContext(sparsity=0.9, scope="layerwise", options={"rounds": 3})
>>> ctx.target_sparsity(), ctx.selection_settings()
(0.9, {'scope': 'layerwise', 'min_density': 0.0, 'invert': False})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from lightning_prune_init._validation import check_bool, check_choice, check_mapping, check_number
from lightning_prune_init.scoring.losses import LossFn, make_loss

__all__ = ["ScoringContext", "check_sparsity"]

SCOPES = ("global", "layerwise")
_PATTERN = re.compile(r"^([1-9][0-9]*):([1-9][0-9]*)$")


def check_sparsity(sparsity: Any, pattern: str | None = None) -> float | None:
    """``sparsity`` as a float in ``[0, 1)``; ``None`` is accepted only with an N:M ``pattern`` (which sets it).

    >>> check_sparsity(0.9)
    0.9
    """
    if sparsity is None and pattern is not None:
        return None
    return check_number("sparsity", sparsity, minimum=0.0, maximum=1.0, maximum_inclusive=False)


def _check_pattern(pattern: Any) -> str | None:
    if pattern is None:
        return None
    match = _PATTERN.match(pattern) if isinstance(pattern, str) else None
    if match is None or int(match.group(1)) >= int(match.group(2)):
        raise ValueError(f"`pattern` must be 'n:m' with 0 < n < m (e.g. '2:4': keep 2 of every 4), got {pattern!r}")
    return pattern


@dataclass(frozen=True)
class ScoringContext:
    """Everything a criterion needs besides ``(model, batches, parameters)``; immutable, checked when made.

    Attributes:
        loss: ``loss(model, batch) -> scalar tensor``, built once by :func:`make_loss` (default: the supervised
            default loss, ``make_loss("labels")``).
        sparsity: the final fraction removed, in ``[0, 1)``; iterative criteria need it (or a ``pattern``).
        scope: ``"global"`` (default) or ``"layerwise"``: how ``select_masks`` picks the masks.
        min_density: each tensor keeps at least this fraction, in ``[0, 1]``; default 0.
        invert: keep the lowest scores (sanity check); default False.
        pattern: an N:M pattern such as ``"2:4"`` (keep n of every m along the input dimension), or None.
        reduce_fn: applied to signed per-rank sums (an all-reduce over data-parallel ranks), or None.
        generator: the ``torch.Generator`` of random criteria, or None (they then seed their own with 0).
        options: the criterion's options, e.g. ``{"rounds": 100}``; read-only. Criteria fill in their defaults
            with :func:`~lightning_prune_init.scoring.registry.check_criterion_options`.

    Raises:
        ValueError / TypeError: a value out of range or of the wrong type (the message names the field).

    >>> ScoringContext(sparsity=1.5)
    Traceback (most recent call last):
    ...
    ValueError: `sparsity` must be a finite number in [0, 1), got 1.5
    """

    loss: LossFn = field(default_factory=make_loss)
    sparsity: float | None = None
    scope: str = "global"
    min_density: float = 0.0
    invert: bool = False
    pattern: str | None = None
    reduce_fn: Callable[[Tensor], Tensor] | None = None
    generator: torch.Generator | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.loss):
            raise TypeError(f"`loss` must be a function (model, batch) -> scalar tensor, got {type(self.loss).__name__}")
        pattern = _check_pattern(self.pattern)
        sparsity = None if self.sparsity is None else check_sparsity(self.sparsity, pattern)
        check_choice("scope", self.scope, SCOPES)
        min_density = check_number("min_density", self.min_density, minimum=0.0, maximum=1.0)
        check_bool("invert", self.invert)
        if self.reduce_fn is not None and not callable(self.reduce_fn):
            raise TypeError(f"`reduce_fn` must be a function of a tensor, got {type(self.reduce_fn).__name__}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator, got {type(self.generator).__name__}")
        options = MappingProxyType(check_mapping("criterion_options", self.options, allow_none=False) or {})
        object.__setattr__(self, "sparsity", sparsity)
        object.__setattr__(self, "min_density", min_density)
        object.__setattr__(self, "options", options)

    def target_sparsity(self, criterion: str = "this criterion") -> float:
        """The final sparsity: ``sparsity``, or ``1 − n/m`` of the ``pattern``; ``ValueError`` when neither is set.

        >>> ScoringContext(pattern="2:4").target_sparsity()
        0.5
        """
        if self.sparsity is not None:
            return self.sparsity
        if self.pattern is not None:
            n, m = (int(v) for v in self.pattern.split(":"))
            return 1.0 - n / m
        raise ValueError(f"criterion {criterion!r} prunes in rounds and needs `sparsity` (or an N:M `pattern`)")

    def selection_settings(self, layouts: Any = None) -> dict[str, Any]:
        """Keyword arguments of ``select_masks`` besides the sparsity: scope, min_density, invert, and the
        pattern (with ``layouts``, e.g. the selection, for the true input dimension) only when one is set.

        >>> ScoringContext(pattern="2:4").selection_settings()["pattern"]
        '2:4'
        """
        settings: dict[str, Any] = {"scope": self.scope, "min_density": self.min_density, "invert": self.invert}
        if self.pattern is not None:
            settings["pattern"] = self.pattern
            if layouts is not None:
                settings["layouts"] = layouts
        return settings
