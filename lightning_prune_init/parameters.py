"""Which tensors are pruned: one selection, resolved once and honoured by every stage.

:func:`select_parameters` turns the rule (``include``/``exclude`` glob patterns, ``prune_biases``, or the default
rule) into a :class:`ParameterSelection`. Scoring, mask selection, initialization, the isometry repair, the
signal-propagation monitor and the reports all take that object, so they agree on the same tensors under the
same names, and nothing outside the selection is changed.

The default rule selects the weight of every ``nn.Linear``, ``nn.Conv1d/2d/3d`` (subclasses included),
transformers ``Conv1D`` and the input projection of every ``nn.MultiheadAttention`` (``in_proj_weight``, or
``q/k/v_proj_weight``), first and last layers included; their biases too with ``prune_biases=True``. Frozen
tensors (``requires_grad=False``) are left out with a note.

With ``include`` patterns, every tensor one of whose names matches is a candidate, with two guards, each
reported in :attr:`ParameterSelection.notes`:

* a tensor of fewer than 2 dimensions (a bias, a normalization gain) matched only by a wildcard pattern is
  skipped: name it exactly, or use ``prune_biases=True`` for the biases of the layers above;
* ``exclude`` wins: a tensor is left out if any of its names matches an ``exclude`` pattern.

Shared (tied) tensors are selected once, under the name ``model.named_parameters()`` yields (its first
registration), with every other name in :attr:`SelectedParameter.aliases`; patterns may use any of the names.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
>>> list(select_parameters(net))
['0.weight', '2.weight']
>>> sel = select_parameters(net, include="*.weight")
>>> list(sel), sel.notes
(['0.weight', '2.weight'], ('1.weight: skipped, it has fewer than 2 dimensions and only a wildcard pattern matches it (name it exactly to prune it)',))
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_prune_init.layouts import CONV_TYPES, MatrixLayout, hf_conv1d_type, layout_of

__all__ = ["ParameterSelection", "SelectedParameter", "as_selection", "layer_name", "select_parameters"]

Patterns = str | Sequence[str] | None

_WILDCARDS = frozenset("*?[")


def _default_attrs(module: nn.Module, prune_biases: bool) -> tuple[str, ...]:
    """The attributes of ``module`` the default rule selects (its own parameters only)."""
    conv1d = hf_conv1d_type()
    if isinstance(module, (nn.Linear, *CONV_TYPES)) or (conv1d is not None and isinstance(module, conv1d)):
        return ("weight", "bias") if prune_biases else ("weight",)
    if isinstance(module, nn.MultiheadAttention):
        weights = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        return (*weights, "in_proj_bias") if prune_biases else weights
    return ()


def layer_name(param_name: str) -> str:
    """The module part of a parameter name: ``"features.0.weight" -> "features.0"``."""
    return param_name.rpartition(".")[0] or param_name


def _patterns(value: Patterns, argument: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence):
        raise TypeError(f"`{argument}` must be a glob pattern or a list of them, got {type(value).__name__} {value!r}")
    patterns = list(value)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise TypeError(f"`{argument}` must be a glob pattern or a list of them, got an element {p!r}")
    return patterns


def _matches(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The patterns among ``patterns`` that match one of ``names``."""
    return [p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)]


@dataclass(frozen=True)
class SelectedParameter:
    """One selected tensor.

    Attributes:
        name: its name as ``model.named_parameters()`` yields it (masks and scores are keyed by it).
        aliases: its other names, when it is shared (tied) with other modules, in registration order.
        shape: its shape.
        layout: how it reads as matrices (:class:`~lightning_prune_init.layouts.MatrixLayout`).
        frozen: ``requires_grad`` was False when it was selected.
    """

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    layout: MatrixLayout
    frozen: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """``(name, *aliases)``."""
        return (self.name, *self.aliases)

    @property
    def layer(self) -> str:
        """The owning module's name (``"features.0"`` for ``"features.0.weight"``)."""
        return layer_name(self.name)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class ParameterSelection(Mapping[str, nn.Parameter]):
    """The tensors of one module chosen for pruning: a read-only mapping ``name -> nn.Parameter``.

    Built by :func:`select_parameters`. Iteration follows ``module.named_parameters()``; lookups accept any name
    of a tied tensor. Parameters are looked up on the module at each access (``module.get_parameter``), so the
    selection follows a Parameter that was replaced in place.

    Attributes:
        module: the module the names refer to.
        entries: ``{name: SelectedParameter}``.
        notes: what the rule skipped or merged, one sentence each (tied tensors, 1-D tensors under a wildcard,
            frozen tensors).
        rule: the arguments the selection was made from (``include``, ``exclude``, ``prune_biases``), plain values.
    """

    def __init__(
        self,
        module: nn.Module,
        entries: Sequence[SelectedParameter],
        notes: Sequence[str] = (),
        rule: Mapping[str, Any] | None = None,
    ) -> None:
        self.module = module
        self.entries: dict[str, SelectedParameter] = {e.name: e for e in entries}
        self._canonical = {alias: e.name for e in entries for alias in e.names}
        self.notes: tuple[str, ...] = tuple(notes)
        self.rule: dict[str, Any] = dict(rule or {})

    # --- Mapping ---------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> nn.Parameter:
        return self.module.get_parameter(self.canonical(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self._canonical

    def __repr__(self) -> str:
        return f"ParameterSelection({len(self)} tensors of {type(self.module).__name__}: {list(self.entries)})"

    # --- lookups ---------------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The name under which a (possibly tied) tensor is selected; raises ``KeyError`` if it is not selected."""
        try:
            return self._canonical[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in the selection ({', '.join(self.entries)})") from None

    def entry(self, name: str) -> SelectedParameter:
        """The :class:`SelectedParameter` of ``name`` (any of its names)."""
        return self.entries[self.canonical(name)]

    def layout(self, name: str) -> MatrixLayout:
        """How the tensor ``name`` reads as matrices."""
        return self.entry(name).layout

    @property
    def numel(self) -> int:
        """Number of selected scalars, each shared tensor counted once."""
        return sum(e.numel for e in self.entries.values())

    def matrices(self) -> dict[str, SelectedParameter]:
        """The entries that are linear maps (at least 2 dimensions), by name."""
        return {n: e for n, e in self.entries.items() if e.layout.is_matrix}

    def require_module(self, module: nn.Module, argument: str = "parameters") -> None:
        """Raise ``ValueError`` unless the selection was made on ``module``."""
        if module is not self.module:
            raise ValueError(
                f"`{argument}` was selected on another module ({type(self.module).__name__} at {id(self.module):#x}) "
                f"than the one given ({type(module).__name__} at {id(module):#x}); build it with "
                "select_parameters(model, ...) on the same module"
            )

    def describe(self) -> str:
        """One line per tensor: names, shape, kind; then the notes."""
        lines = []
        for e in self.entries.values():
            also = f" (also {', '.join(e.aliases)})" if e.aliases else ""
            lines.append(f"{e.name}{also}: {list(e.shape)}, {e.layout.kind}" + (", frozen" if e.frozen else ""))
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def select_parameters(
    model: nn.Module,
    include: Patterns = None,
    exclude: Patterns = None,
    *,
    prune_biases: bool = False,
) -> ParameterSelection:
    """Resolve the pruning rule on ``model`` into a :class:`ParameterSelection`.

    Args:
        model: the module whose parameters are selected (names are relative to it).
        include: glob pattern(s) (``fnmatch``) on parameter names, any name of a tied tensor; ``None`` (default)
            applies the default rule (module docstring).
        exclude: glob pattern(s) removing tensors from the candidates.
        prune_biases: also select the biases of the default rule's layers (``in_proj_bias`` for attention). The
            official SNIP/SPP code prunes biases; by default they stay dense.

    Returns:
        The selection, in ``model.named_parameters()`` order.

    Raises:
        TypeError: ``model`` is not a module, a pattern is not a string, ``prune_biases`` is not a bool.
        ValueError: a pattern matches no parameter name, or nothing is left to prune (the message says why).

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(72, 10))
    >>> list(select_parameters(net, exclude="2.*"))
    ['0.weight']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(prune_biases, bool):
        raise TypeError(f"`prune_biases` must be a bool, got {type(prune_biases).__name__} {prune_biases!r}")
    include_patterns = _patterns(include, "include")
    exclude_patterns = _patterns(exclude, "exclude")

    # every name of every tensor, in registration order; the first name of each is the canonical one
    names_of: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    owners: dict[str, tuple[nn.Module, str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{attr}" if module_name else attr
            if full in owners:
                continue
            owners[full] = (module, attr)
            names_of.setdefault(id(p), []).append(full)
            params[id(p)] = p
    canonical = {n for n, _ in model.named_parameters()}
    for key, names in names_of.items():  # the name named_parameters() yields is the canonical one
        names_of[key] = sorted(names, key=lambda n: n not in canonical)  # stable: registration order otherwise
    all_names = [n for names in names_of.values() for n in names]

    for argument, patterns in (("include", include_patterns), ("exclude", exclude_patterns)):
        for pattern in patterns:
            if not _matches(all_names, [pattern]):
                shown = ", ".join(all_names[:8]) + (", ..." if len(all_names) > 8 else "")
                raise ValueError(
                    f"`{argument}` pattern {pattern!r} matches no parameter of {type(model).__name__}; parameter "
                    f"names look like: {shown or '(the model has no parameters)'}"
                )

    notes: list[str] = []
    entries: list[SelectedParameter] = []
    for key, names in names_of.items():
        p = params[key]
        name = names[0]
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{name} is an uninitialized (lazy) parameter: run one forward pass (or `configure_model`) before "
                "selecting parameters to prune"
            )
        aliases = tuple(names[1:])
        shown = name + (f" (also {', '.join(aliases)})" if aliases else "")
        if include_patterns:
            matched = _matches(names, include_patterns)
            if not matched:
                continue
            exact = any(not (_WILDCARDS & set(pat)) for pat in matched)
            is_bias = any(
                owners[n][1] in ("bias", "in_proj_bias") and owners[n][1] in _default_attrs(owners[n][0], True)
                for n in names
            )
            if p.dim() < 2 and not exact and not (prune_biases and is_bias):
                notes.append(
                    f"{shown}: skipped, it has fewer than 2 dimensions and only a wildcard pattern matches it "
                    "(name it exactly to prune it"
                    + (", or pass prune_biases=True)" if is_bias else ")")
                )
                continue
        else:
            if not any(owners[n][1] in _default_attrs(owners[n][0], prune_biases) for n in names):
                continue
            if not p.requires_grad:
                notes.append(f"{shown}: skipped, it is frozen (requires_grad=False); include it by name to prune it")
                continue
        if exclude_patterns and _matches(names, exclude_patterns):
            continue
        # the layout of the first name whose module gives a specific one (a tied head is read as its Linear)
        layouts = [layout_of(*owners[n], p) for n in names]
        layout = next((lay for lay in layouts if lay.kind not in ("matrix", "vector")), layouts[0])
        if aliases:
            notes.append(f"{name} is shared with {', '.join(aliases)}: it is pruned once, with one mask")
        entries.append(SelectedParameter(name, aliases, tuple(p.shape), layout, frozen=not p.requires_grad))

    if not entries:
        if include_patterns:
            why = f"`include`={include_patterns} matched only tensors that were skipped"
        else:
            why = (
                "by default the weights of Linear, Conv1d/2d/3d, transformers Conv1D and MultiheadAttention layers "
                "are pruned, and this model has none that is trainable"
            )
        raise ValueError(
            f"no prunable parameters in {type(model).__name__}: {why}"
            + (f" (after `exclude`={exclude_patterns})" if exclude_patterns else "")
            + "; pass `include` glob patterns on parameter names to choose others"
            + ("".join(f"\n  note: {n}" for n in notes) if notes else "")
        )
    rule = {"include": include_patterns or None, "exclude": exclude_patterns or None, "prune_biases": prune_biases}
    return ParameterSelection(model, entries, notes, rule)


def as_selection(
    model: nn.Module, parameters: ParameterSelection | str | Sequence[str] | None, argument: str = "parameters"
) -> ParameterSelection:
    """``parameters`` as a :class:`ParameterSelection` of ``model``: a selection made on ``model`` is returned as is;
    ``None`` applies the default rule; a glob pattern or a list of them is ``include``.

    Raises:
        ValueError: a selection made on another module, or what :func:`select_parameters` raises.
        TypeError: any other type.
    """
    if isinstance(parameters, ParameterSelection):
        parameters.require_module(model, argument)
        return parameters
    if parameters is None or isinstance(parameters, (str, Sequence)):
        return select_parameters(model, include=parameters)
    raise TypeError(
        f"`{argument}` must be a ParameterSelection (select_parameters(model, ...)), a glob pattern, a list of "
        f"them or None, got {type(parameters).__name__}"
    )

