"""Argument checks shared by the whole package: one message style, raised before anything changes.

Every check names the argument, says what is accepted and shows the value it got, e.g.
``ValueError: `sparsity` must be a number in [0, 1), got 1.5``. Each returns the value, normalized (ints as
``int``, numbers as ``float``), so callers can write ``self.lr = check_number("lr", lr, minimum=0, ...)``.

>>> check_number("lr", 0.1, minimum=0.0, minimum_inclusive=False)
0.1
>>> check_choice("scope", "global", ("global", "layerwise"))
'global'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_bool_masks",
    "check_choice",
    "check_generator",
    "check_instances",
    "check_int",
    "check_mapping",
    "check_number",
    "check_patterns",
]

T = TypeVar("T")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_choice(argument: str, value: T, choices: Sequence[T]) -> T:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable or incomparable
        ok = False
    if not ok:
        raise ValueError(f"`{argument}` must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_bool(argument: str, value: Any) -> bool:
    """``value`` if it is a ``bool``, else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{argument}` must be true or false, got {type(value).__name__} {value!r}")
    return value


def check_int(
    argument: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as an ``int`` within ``[minimum, maximum]`` (bounds optional, inclusive).

    Raises:
        TypeError: not an int (``bool`` and floats are refused), or ``None`` when not allowed.
        ValueError: out of range.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{argument}` must be an integer{_interval(minimum, maximum)}, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{argument}` must be an integer{_interval(minimum, maximum)}, got {value}")
    return int(value)


def check_number(
    argument: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    minimum_inclusive: bool = True,
    maximum_inclusive: bool = True,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a finite ``float`` within the given bounds.

    Raises:
        TypeError: not a real number (``bool`` refused), or ``None`` when not allowed.
        ValueError: NaN, infinite, or out of range.
    """
    if value is None and allow_none:
        return None
    bounds = _interval(minimum, maximum, minimum_inclusive, maximum_inclusive)
    if not _is_number(value):
        raise TypeError(f"`{argument}` must be a number{bounds}, got {type(value).__name__} {value!r}")
    value = float(value)
    below = minimum is not None and (value < minimum or (value == minimum and not minimum_inclusive))
    above = maximum is not None and (value > maximum or (value == maximum and not maximum_inclusive))
    if not math.isfinite(value) or below or above:
        raise ValueError(f"`{argument}` must be a finite number{bounds}, got {value}")
    return value


def check_generator(argument: str, value: Any) -> Any:
    """``value`` if it is ``None`` or a ``torch.Generator``, else ``TypeError`` (an int seed is not accepted here)."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(
            f"`{argument}` must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, got "
            f"{type(value).__name__} {value!r}"
        )
    return value


def check_patterns(argument: str, value: Any) -> list[str] | None:
    """A glob pattern or a list of them, as a list (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(p, str) and p for p in value):
        raise TypeError(f"`{argument}` must be a glob pattern or a list of them, got {value!r}")
    return list(value)


def check_mapping(argument: str, value: Any, allow_none: bool = True) -> dict[str, Any] | None:
    """A mapping with string keys, as a ``dict`` (``None`` stays ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"`{argument}` must be a mapping of names to values, got {type(value).__name__} {value!r}")
    return dict(value)


def check_bool_masks(
    masks: Any, shapes: Mapping[str, torch.Size | tuple[int, ...]], *, argument: str = "masks", owner: str = "the model"
) -> dict[str, Tensor]:
    """Check a ``{name: torch.bool tensor}`` mapping against the expected ``{name: shape}``; returns it as a dict.

    Every key must be one of ``shapes`` (the message suggests a close name), every value a ``torch.bool``
    tensor (``True`` = kept) of that shape. Keys of ``shapes`` missing from ``masks`` are allowed.

    Raises:
        TypeError: not a mapping, or a mask that is not a bool tensor.
        ValueError: empty, an unknown key, or a shape mismatch.
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"`{argument}` must be a mapping of parameter name to bool tensor, got {type(masks).__name__}")
    if not masks:
        raise ValueError(f"`{argument}` is empty: nothing to apply")
    for name, mask in masks.items():
        if name not in shapes:
            close = [n for n in shapes if isinstance(name, str) and (n.endswith(name) or name.endswith(n))]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{argument[:-1] if argument.endswith('s') else argument} key {name!r} is not a parameter of {owner}: "
                f"keys must be the names `model.named_parameters()` yields{hint}"
            )
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask {name!r} must be a torch.bool tensor (True = kept), got {got}")
        if tuple(mask.shape) != tuple(shapes[name]):
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, its parameter has {tuple(shapes[name])}")
    return dict(masks)


def _interval(minimum: float | None, maximum: float | None, lo_incl: bool = True, hi_incl: bool = True) -> str:
    """The bounds as the messages say them: `` in [0, 1)``, `` >= 1``, or ``""`` without bounds (ints as ints)."""
    low, high = (f"{v}" if isinstance(v, int) or v is None else f"{v:g}" for v in (minimum, maximum))
    if minimum is not None and maximum is not None:
        return f" in {'[' if lo_incl else '('}{low}, {high}{']' if hi_incl else ')'}"
    if minimum is not None:
        return f" {'>=' if lo_incl else '>'} {low}"
    if maximum is not None:
        return f" {'<=' if hi_incl else '<'} {high}"
    return ""


def check_instances(argument: str, value: Any, cls: type | tuple[type, ...], what: str) -> list[Any]:
    """``value`` as a list of ``cls`` instances (an iterable of them, or a single one); ``what`` names ``cls``.

    Raises:
        TypeError: not iterable, or an element that is not a ``cls``.

    >>> check_instances("sizes", (3, 4), int, "integers")
    [3, 4]
    >>> check_instances("sizes", 3, int, "integers")
    [3]
    """
    if isinstance(value, cls):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"`{argument}` must be a list of {what}, got {type(value).__name__}") from None
    for item in items:
        if not isinstance(item, cls):
            raise TypeError(f"`{argument}` must be a list of {what}, got an element {type(item).__name__}")
    return items
