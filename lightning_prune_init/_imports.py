"""Callables given by import path, and import paths of callables: how user hooks travel through YAML and checkpoints.

A setting that names user code (``loss_fn``, ``logits_fn``, a custom ``criterion``, the monitor's ``forward_fn``)
is given either as the function or as its import path ``"package.module.name"``. The package stores the *path*,
never the function object, so configs print and checkpoints load with ``torch.load(weights_only=True)``; a
function with no importable path (a lambda, a local function) is refused when the setting is made.

>>> resolve_callable("math.sqrt", "loss_fn")(4.0)
2.0
>>> import math
>>> import_path(math.sqrt, "loss_fn")
'math.sqrt'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["import_path", "resolve_callable"]


def resolve_callable(value: str | Callable[..., Any] | None, argument: str) -> Callable[..., Any] | None:
    """``value`` if callable, the object at import path ``value`` if a string, ``None`` for ``None``.

    Raises:
        TypeError: neither a callable nor a dotted string, or the imported object is not callable.
        ValueError: the path cannot be imported (the message names ``argument``).
    """
    if value is None or callable(value):
        return value
    if not isinstance(value, str) or "." not in value:
        raise TypeError(f"`{argument}` must be a callable or its import path 'package.module.name', got {value!r}")
    module_name, _, attr = value.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
    except ImportError:
        # a path through a class or a nested attribute: import the longest module prefix, then walk attributes
        obj, parts = None, value.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for part in parts[cut:]:
                obj = getattr(obj, part, None)
            break
        if obj is None:
            raise ValueError(f"`{argument}`={value!r} cannot be imported: no module {module_name!r}") from None
    else:
        obj = getattr(obj, attr, None)
    if obj is None:
        raise ValueError(f"`{argument}`={value!r} cannot be imported: {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise TypeError(f"`{argument}`={value!r} is not callable")
    return obj


def import_path(value: str | Callable[..., Any] | None, argument: str) -> str | None:
    """The import path of a callable (checked by importing it back), or the path string itself (checked too).

    Raises:
        ValueError: a callable with no importable path (a lambda, a local or nested function, a bound method),
            whose object at that path is not the same object; or a path that cannot be imported.
        TypeError: neither a callable, a string nor ``None``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        resolve_callable(value, argument)
        return value
    if not callable(value):
        raise TypeError(f"`{argument}` must be a callable or its import path 'package.module.name', got {value!r}")
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    path = f"{module}.{qualname}" if module and qualname else None
    if path is None or "<" in path:
        raise ValueError(
            f"`{argument}`={value!r} has no import path (a lambda or a local function): define it at module level "
            "and pass the function or its path 'package.module.name', so that configs and checkpoints can name it"
        )
    try:
        found = resolve_callable(path, argument)
    except (ValueError, TypeError):
        found = None
    if found is not value:
        raise ValueError(
            f"`{argument}`={value!r}: its import path {path!r} does not lead back to it; define it at module level "
            "and pass the function or its path"
        )
    return path
