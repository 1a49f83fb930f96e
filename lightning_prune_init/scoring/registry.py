"""The criterion registry: which scoring functions exist, what each needs, and which options it takes.

A criterion is one small function (the role ``compute_mask`` plays in ``torch.nn.utils.prune``)::

    fn(model, batches, parameters, context) -> {parameter name: scores}

``parameters`` is the :class:`~lightning_prune_init.parameters.ParameterSelection` to score, ``context`` a
:class:`~lightning_prune_init.scoring.context.ScoringContext` (the loss, the selection settings, the reduction
over ranks, the generator and the criterion's options). Scores are non-negative, of each selected tensor's
shape and device, higher = keep; ``select_masks`` with the context's settings turns them into the masks.

Registering declares what the criterion needs (data, rounds, second derivatives) and its options with their
defaults, so that a wrong option is refused before anything runs (:func:`check_criterion_options`). This
module imports no criterion: the criteria modules import it (docs/criteria.md).

>>> sorted(CRITERIA)
['grasp', 'iterative_snip', 'magnitude', 'random', 'snip', 'synflow']
>>> check_criterion_options("synflow", {"rounds": 10})
{'rounds': 10, 'dtype': 'float64', 'input_shape': None}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor

from lightning_prune_init._imports import resolve_callable
from lightning_prune_init._validation import check_bool, check_mapping

__all__ = [
    "CRITERIA",
    "Criterion",
    "check_criterion_options",
    "criterion_needs_data",
    "get_criterion",
    "register_criterion",
]

#: ``fn(model, batches, parameters, context) -> {name: scores}``.
Criterion = Callable[..., dict[str, Tensor]]

#: Registered criteria by name (``tuple(CRITERIA)`` lists them). Add one with :func:`register_criterion`;
#: look one up, or import one by path, with :func:`get_criterion`.
CRITERIA: dict[str, Criterion] = {}


def register_criterion(
    name: str,
    *,
    needs_data: bool = True,
    iterative: bool = False,
    second_order: bool = False,
    options: Mapping[str, Any] | None = None,
    check_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[Criterion], Criterion]:
    """Decorator: register ``fn(model, batches, parameters, context) -> {name: scores}`` under ``name``.

    The function gets the attributes ``criterion_name``, ``needs_data``, ``iterative``, ``second_order``,
    ``options`` (read-only defaults) and ``check_options``.

    Args:
        name: the registry key (what YAML configs give as ``criterion``); no dots (dots mean import paths).
        needs_data: False for data-free criteria, which accept ``batches=None``.
        iterative: True when the criterion prunes in rounds (it needs ``context.sparsity`` or a pattern).
        second_order: True when it differentiates twice (it then runs attention through the math SDPA kernel).
        options: the options it reads from ``context.options``, with their defaults (default: none).
        check_options: ``check(options) -> options`` validating the values (all options filled in), raising
            ``ValueError``/``TypeError`` that name the option; default: no check of the values.

    Raises:
        ValueError: an empty name, a name with a dot, or a name registered to another function.
        TypeError: ``options`` is not a mapping of names, a flag is not a bool, or what is decorated is not callable.

    >>> @register_criterion("doc_example_half", needs_data=False)
    ... def half(model, batches, parameters, context):
    ...     return {n: p.detach().abs() / 2 for n, p in parameters.items()}
    >>> get_criterion("doc_example_half") is half, half.needs_data
    (True, False)
    >>> del CRITERIA["doc_example_half"]
    """
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"a criterion name must be a non-empty string without dots, got {name!r}")
    flags = {f: check_bool(f, v) for f, v in (("needs_data", needs_data), ("iterative", iterative),
                                              ("second_order", second_order))}
    defaults = MappingProxyType(check_mapping("options", options) or {})
    if check_options is not None and not callable(check_options):
        raise TypeError(f"`check_options` must be a function, got {type(check_options).__name__}")

    def decorator(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise TypeError(f"register_criterion({name!r}) decorates a function, got {type(fn).__name__}")
        if name in CRITERIA and CRITERIA[name] is not fn:
            raise ValueError(f"criterion {name!r} is already registered (to {CRITERIA[name].__qualname__})")
        fn.criterion_name = name  # type: ignore[attr-defined]
        for flag, value in flags.items():
            setattr(fn, flag, value)
        fn.options = defaults  # type: ignore[attr-defined]
        fn.check_options = check_options  # type: ignore[attr-defined]
        CRITERIA[name] = fn
        return fn

    return decorator


def get_criterion(criterion: str | Criterion) -> Criterion:
    """The criterion registered as ``criterion``, or imported from its path ``"package.module.name"``.

    A callable is returned as is. A criterion that was not registered is treated as needing data, not iterative,
    first order, and taking any option.

    Raises:
        ValueError: an unknown name (the message lists :data:`CRITERIA`) or a path that cannot be imported.
        TypeError: neither a string nor a callable.

    >>> get_criterion("snip").criterion_name
    'snip'
    """
    if callable(criterion):
        return criterion
    if not isinstance(criterion, str):
        raise TypeError(f"`criterion` must be a name, an import path or a callable, got {type(criterion).__name__}")
    if criterion in CRITERIA:
        return CRITERIA[criterion]
    if "." not in criterion:
        raise ValueError(
            f"unknown `criterion` {criterion!r}; registered: {', '.join(map(repr, CRITERIA))}, or give the import "
            "path of your own scoring function ('package.module.name')"
        )
    return resolve_callable(criterion, "criterion")  # type: ignore[return-value]


def criterion_needs_data(criterion: str | Criterion) -> bool:
    """Whether the criterion reads scoring batches (False for ``synflow``, ``magnitude``, ``random``).

    >>> criterion_needs_data("synflow"), criterion_needs_data("snip")
    (False, True)
    """
    return bool(getattr(get_criterion(criterion), "needs_data", True))


def check_criterion_options(criterion: str | Criterion, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The criterion's options: its declared defaults updated with ``options``, checked; call it before scoring.

    Every key of ``options`` must be an option the criterion declared (:func:`register_criterion`), and the
    values pass the criterion's own check. A criterion that was not registered (an import path) takes
    ``options`` as given.

    Raises:
        ValueError: an option the criterion does not take (the message lists those it takes), or a bad value.
        TypeError: ``options`` is not a mapping of names, or a value of the wrong type.

    >>> check_criterion_options("grasp", None)
    {'temperature': 200.0}
    >>> check_criterion_options("snip", {"rounds": 3})
    Traceback (most recent call last):
    ...
    ValueError: criterion 'snip' takes no option 'rounds' (`criterion_options`); it takes no options
    """
    fn = get_criterion(criterion)
    given = check_mapping("criterion_options", options) or {}
    declared = getattr(fn, "options", None)
    if declared is None:
        return given
    name = getattr(fn, "criterion_name", getattr(fn, "__qualname__", repr(fn)))
    unknown = [k for k in given if k not in declared]
    if unknown:
        takes = ", ".join(f"{k}={v!r}" for k, v in declared.items()) or "no options"
        plural = "s" if len(unknown) > 1 else ""
        raise ValueError(
            f"criterion {name!r} takes no option{plural} {', '.join(map(repr, unknown))} (`criterion_options`); "
            f"it takes {takes}"
        )
    merged = {**declared, **given}
    check = getattr(fn, "check_options", None)
    return dict(check(merged)) if check is not None else merged
