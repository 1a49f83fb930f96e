"""Which parameters are prunable: the default rule and glob patterns on parameter names.

Every function of the package that works on "the prunable parameters" of a model goes through
:func:`prunable_parameters`, so the scorer, the selector, the isometry repair and the monitors agree
on the same tensors under the same names (the names ``model.named_parameters()`` yields).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

#: Module types whose ``weight`` is prunable by default (and whose ``bias`` is, with ``prune_biases``).
PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)


def _as_patterns(value: str | Sequence[str] | None, argument: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    patterns = list(value)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"`{argument}` must be a glob pattern or a list of them, got an element {p!r}")
    return patterns


def prunable_parameters(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    prune_biases: bool = False,
) -> dict[str, nn.Parameter]:
    """Return the prunable parameters of ``model`` by fully qualified name, in registration order.

    Args:
        model: the module to search.
        include: glob pattern(s) matched against parameter names (``fnmatch``, e.g. ``"features.*.weight"``).
            ``None`` (default) selects the ``weight`` of every :data:`PRUNABLE_MODULE_TYPES` module (conv and
            linear layers, first and last included), plus their ``bias`` if ``prune_biases``. When given, any
            parameter whose name matches one pattern is a candidate, whatever its module type.
        exclude: glob pattern(s); matching parameters are removed from the candidates.
        prune_biases: also select the biases of conv and linear layers in the default rule. Biases are left
            dense by default (the official SNIP/SPP code prunes them; see the docs).

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or a pattern is not a string.
        ValueError: a pattern matches no parameter, or nothing is left to prune.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    include_patterns = _as_patterns(include, "include")
    exclude_patterns = _as_patterns(exclude, "exclude")
    all_params = dict(model.named_parameters())

    for argument, patterns in (("include", include_patterns), ("exclude", exclude_patterns)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in all_params):
                shown = ", ".join(list(all_params)[:8]) + (", ..." if len(all_params) > 8 else "")
                raise ValueError(
                    f"`{argument}` pattern {pattern!r} matches no parameter of {type(model).__name__}; "
                    f"parameter names look like: {shown or '(the model has no parameters)'}"
                )

    if include_patterns:
        candidates = {
            name: p
            for name, p in all_params.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in include_patterns)
        }
    else:
        candidates = {}
        for module_name, module in model.named_modules():
            if not isinstance(module, PRUNABLE_MODULE_TYPES):
                continue
            names = ["weight", "bias"] if prune_biases else ["weight"]
            for attr in names:
                p = module._parameters.get(attr)
                if p is not None:
                    candidates[f"{module_name}.{attr}" if module_name else attr] = p
        # keep named_parameters() order (shared modules are listed once, under their first name)
        candidates = {name: all_params[name] for name in all_params if name in candidates}

    selected = {
        name: p
        for name, p in candidates.items()
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude_patterns)
    }
    if not selected:
        kinds = ", ".join(t.__name__ for t in PRUNABLE_MODULE_TYPES)
        raise ValueError(
            f"no prunable parameters in {type(model).__name__}: by default the weights of {kinds} layers are "
            "pruned; pass `include` glob patterns on parameter names to choose others"
            + (f" (after `exclude`={exclude_patterns})" if exclude_patterns else "")
        )
    return selected


def layer_name(param_name: str) -> str:
    """The module part of a parameter name: ``"features.0.weight" -> "features.0"``."""
    return param_name.rpartition(".")[0] or param_name
