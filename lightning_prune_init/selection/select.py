"""From scores to boolean masks: global or per-layer top-k with an exact keep count, or an N:M pattern.

The keep count is ``κ = round(m · (1 − sparsity))`` where ``m`` counts the scored entries (all tensors together
for ``scope="global"``, each tensor alone for ``"layerwise"``). Ties at the threshold are broken
deterministically: among equal scores, entries come in the order of the ``scores`` mapping, then by flat
(row-major) index, and the earlier ones are kept (:mod:`~lightning_prune_init.selection.topk`). So the count is
always exact and the same scores always give the same masks, on any device and any rank.

Options of :func:`select_masks`:

* ``min_density``: every tensor keeps at least ``ceil(min_density · numel)`` entries (its own highest scores).
  With ``scope="global"`` the total stays exactly ``κ``: the floors are taken first, and the remaining
  ``κ − Σ floors`` entries go to the highest-scoring entries not yet kept, over all tensors together (one global
  threshold on what is left). This is the keep set of largest total score under the floors. With
  ``scope="layerwise"`` a tensor keeps ``max(round(numel · (1 − sparsity)), floor)``.
* ``invert=True``: keep the *lowest* scores (the "inverted scores" sanity check). Done on the bit patterns
  (``key = bits(+inf) − bits(score)``), which reverses the order exactly, equal scores staying equal; ties are
  still broken by (mapping order, flat index), earlier kept.
* ``pattern="n:m"``: keep the top ``n`` of every ``m`` consecutive inputs
  (:mod:`~lightning_prune_init.selection.patterns`); the sparsity is then ``1 − n/m``.

>>> import torch
>>> masks = select_masks({"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([2.5])}, 0.5)
>>> {name: m.tolist() for name, m in masks.items()}
{'a': [True, False, False], 'b': [True]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Literal

import torch
from torch import Tensor

from lightning_prune_init._validation import check_bool, check_choice, check_number
from lightning_prune_init.selection.collapse import CollapsePolicy, check_masks
from lightning_prune_init.selection.patterns import Layouts, nm_masks, pattern_sparsity
from lightning_prune_init.selection.topk import _INT_VIEW, all_finite, as_bits, inverted, top_k_keys

__all__ = [
    "Scope", "check_floors_fit", "keep_count", "min_keep_count", "select_masks", "validate_min_density",
    "validate_sparsity",
]

Scope = Literal["global", "layerwise"]

_POLICIES = ("warn", "error", "ignore")


def keep_count(numel: int, sparsity: float) -> int:
    """``round(numel · (1 − sparsity))``, rounding half to even like Python's ``round``.

    >>> keep_count(10, 0.75), keep_count(10, 0.85)
    (2, 2)
    """
    return int(round(numel * (1.0 - sparsity)))


def validate_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float in ``[0, 1)`` (the fraction of weights removed: 0.9 keeps 10%).

    Raises:
        TypeError / ValueError: not a number, or outside ``[0, 1)``.

    >>> validate_sparsity(0.9)
    0.9
    """
    return check_number("sparsity", sparsity, minimum=0.0, maximum=1.0, maximum_inclusive=False)


def validate_min_density(min_density: float) -> float:
    """``min_density`` as a float in ``[0, 1]`` (the fraction of each tensor kept at least; 0 = no floor).

    >>> validate_min_density(0)
    0.0
    """
    return check_number("min_density", min_density, minimum=0.0, maximum=1.0)


def min_keep_count(numel: int, min_density: float) -> int:
    """``ceil(min_density · numel)``, computed on the decimal value of ``min_density``.

    >>> min_keep_count(30, 0.1)  # 0.1 · 30 is 3.0000000000000004 in floating point
    3
    """
    return min(numel, math.ceil(Fraction(repr(float(min_density))) * numel))


def _check_scores(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The scores as float32/float64 tensors (views of the caller's where possible), checked finite and >= 0."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("`scores` must be a non-empty mapping of parameter name to score tensor")
    checked = {}
    for name, s in scores.items():
        if not isinstance(s, Tensor):
            raise TypeError(f"score {name!r} must be a tensor, got {type(s).__name__}")
        if s.dtype not in _INT_VIEW:
            s = s.float()  # integers, half and bfloat16 scores are compared in float32
        s = s.contiguous()  # no copy when already contiguous: the caller's scores are read, never written
        if not all_finite(s):
            raise ValueError(
                f"score {name!r} has non-finite values (NaN or inf): check the loss and the initialization; "
                "masks cannot be chosen from them"
            )
        if bool((s < 0).any()):
            raise ValueError(f"score {name!r} has negative values; scores must be >= 0 (take the absolute value)")
        if bool(torch.signbit(s).any()):  # only -0.0 here (finite, >= 0): +0.0 has the smallest bit pattern
            s = s + 0.0
        checked[name] = s
    if len({s.dtype for s in checked.values()}) > 1:
        checked = {n: s.double() for n, s in checked.items()}
    return checked


def _with_floors(keys: Mapping[str, Tensor], k: int, floors: Mapping[str, int]) -> dict[str, Tensor]:
    """Each tensor's ``floors[name]`` largest keys, then the ``k − Σ floors`` largest of all other entries."""
    forced = {name: top_k_keys({name: t}, floors[name])[name] for name, t in keys.items()}
    rest = {name: t.masked_fill(forced[name], -1) for name, t in keys.items()}  # -1: never selected again
    chosen = top_k_keys(rest, k - sum(floors.values()))
    return {name: chosen[name] | forced[name] for name in keys}


def check_floors_fit(numels: Sequence[int], sparsity: float, min_density: float, *, prefix: str = "") -> int:
    """The global keep count ``keep_count(Σ numels, sparsity)``, refusing ``min_density`` floors that ask for more:
    ``Σ min_keep_count(numel, min_density) > keep count``. ``prefix`` names the argument's settings group in the
    message (``"masking."`` for the callback).

    >>> check_floors_fit([100, 100], 0.9, 0.05)
    20
    >>> check_floors_fit([100, 100], 0.9, 0.5)
    Traceback (most recent call last):
    ...
    ValueError: `min_density`=0.5 asks for 100 kept entries in all, more than the 20 that `sparsity`=0.9 keeps of the 200 selected; lower `min_density` (at most about 0.1) or `sparsity`
    """
    total = sum(numels)
    k = keep_count(total, sparsity)
    floors = sum(min_keep_count(n, min_density) for n in numels)
    if floors > k:
        raise ValueError(
            f"`{prefix}min_density`={min_density} asks for {floors:,} kept entries in all, more than the {k:,} that "
            f"`sparsity`={sparsity} keeps of the {total:,} selected; lower `{prefix}min_density` (at most about "
            f"{1 - sparsity:g}) or `sparsity`"
        )
    return k


def _pattern_sparsity(pattern: str, sparsity: float | None, min_density: float) -> float:
    """The sparsity of ``pattern``, refusing a ``sparsity`` or ``min_density`` it contradicts."""
    implied = pattern_sparsity(pattern)
    if sparsity is not None and abs(validate_sparsity(sparsity) - implied) > 1e-9:
        raise ValueError(
            f"pattern={pattern!r} keeps exactly {1 - implied:g} of every tensor (sparsity {implied:g}), but "
            f"`sparsity`={sparsity} was also given: pass sparsity=None (or {implied:g}) with a pattern"
        )
    if min_density > 1 - implied + 1e-12:
        raise ValueError(
            f"`min_density`={min_density} asks for more than the {1 - implied:g} that pattern={pattern!r} keeps of "
            "every tensor: lower `min_density` or choose another pattern"
        )
    return implied


def select_masks(
    scores: Mapping[str, Tensor],
    sparsity: float | None = None,
    *,
    pattern: str | None = None,
    layouts: Layouts = None,
    scope: Scope = "global",
    on_layer_collapse: CollapsePolicy = "warn",
    on_dead_units: CollapsePolicy = "ignore",
    min_density: float = 0.0,
    invert: bool = False,
) -> dict[str, Tensor]:
    """Keep the highest-scoring entries; returns ``{name: bool mask}`` (``True`` = kept).

    Args:
        scores: ``{parameter name: non-negative float tensor}``; the higher, the more important.
        sparsity: fraction of entries removed, in ``[0, 1)``; required unless ``pattern`` is given.
        pattern: ``"n:m"`` (e.g. ``"2:4"``): keep the top ``n`` of every ``m`` consecutive inputs of each row
            (module :mod:`~lightning_prune_init.selection.patterns`). ``sparsity`` is then ``1 − n/m`` (another
            value is refused) and ``scope`` has no effect (every block is chosen alone). Default None.
        layouts: which axis of each tensor is its input dimension, for ``pattern``: a
            :class:`~lightning_prune_init.parameters.ParameterSelection` or ``{name: MatrixLayout}``; default:
            PyTorch's ``[out, in, ...]`` layout flattened after dim 0.
        scope: ``"global"`` (one threshold for all tensors, as SNIP; a layer may collapse) or ``"layerwise"``
            (each tensor keeps ``round(numel · (1 − sparsity))`` of its own entries).
        on_layer_collapse: what to do when a tensor keeps no entry: ``"warn"`` (default,
            :class:`~lightning_prune_init.selection.collapse.LayerCollapseWarning`), ``"error"``
            (:class:`~lightning_prune_init.selection.collapse.LayerCollapseError`, nothing returned) or ``"ignore"``.
        on_dead_units: the same choice for output units of a weight that keep no input (a unit that outputs a
            constant). Default ``"ignore"``: global SNIP leaves some at ordinary sparsities (e.g. about 5% of
            LeNet-300-100's first layer at 90%); :func:`~lightning_prune_init.selection.collapse.find_collapse`
            counts them.
        min_density: each tensor keeps at least ``ceil(min_density · numel)`` entries, in ``[0, 1]``; default 0
            (no floor). Global scope: the total stays ``round(m · (1 − sparsity))``, the rest of the budget
            going to the highest remaining scores over all tensors (see the module docstring).
        invert: keep the lowest scores instead (sanity check); default False.

    Raises:
        ValueError / TypeError: bad sparsity, pattern, scope or min_density; neither sparsity nor pattern; a
            sparsity the pattern contradicts; floors that exceed the global keep count; empty, negative or
            non-finite scores; a pattern on a tensor it cannot divide. Nothing is returned half-built.

    >>> scores = {"fc.weight": torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])}
    >>> select_masks(scores, scope="layerwise", pattern="1:2")["fc.weight"].int()
    tensor([[1, 0, 1, 0],
            [0, 1, 0, 1]], dtype=torch.int32)
    """
    check_choice("scope", scope, ("global", "layerwise"))
    check_choice("on_layer_collapse", on_layer_collapse, _POLICIES)
    check_choice("on_dead_units", on_dead_units, _POLICIES)
    min_density = validate_min_density(min_density)
    check_bool("invert", invert)
    if pattern is not None:
        _pattern_sparsity(pattern, sparsity, min_density)
        masks = nm_masks(_check_scores(scores), pattern, layouts, invert=invert)
        check_masks(masks, on_layer_collapse, on_dead_units)
        return masks
    if sparsity is None:
        raise TypeError("select_masks needs `sparsity` (the fraction removed, e.g. 0.9) or `pattern` (e.g. '2:4')")
    sparsity = validate_sparsity(sparsity)
    checked = _check_scores(scores)
    keys = {name: as_bits(s) for name, s in checked.items()}
    if invert:
        keys = {name: inverted(t) for name, t in keys.items()}
    floors = {name: min_keep_count(t.numel(), min_density) for name, t in keys.items()}
    if scope == "global":
        k = check_floors_fit([t.numel() for t in keys.values()], sparsity, min_density)
        masks = _with_floors(keys, k, floors) if any(floors.values()) else top_k_keys(keys, k)
    else:
        masks = {}
        for name, t in keys.items():
            masks.update(top_k_keys({name: t}, max(keep_count(t.numel(), sparsity), floors[name])))
    check_masks(masks, on_layer_collapse, on_dead_units)
    return masks
