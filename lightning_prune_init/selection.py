"""From scores to boolean masks: global or per-layer top-k with an exact keep count.

The keep count is ``κ = round(m · (1 − sparsity))`` where ``m`` counts the scored entries (all tensors
together for ``scope="global"``, each tensor alone for ``"layerwise"``). Ties at the threshold are broken
deterministically: among equal scores, entries come in the order of the ``scores`` mapping, then by flat
(row-major) index, and the earlier ones are kept. So the count is always exact and the same scores always
give the same masks, on any device and any rank.

The κ-th largest score is found by radix selection on the bit pattern of the (non-negative) float scores,
which orders exactly like the values: 16 bits at a time, 2 counting passes over the scores for float32 (4 for
float64), tensor by tensor and in chunks of 1M entries, with no concatenated copy and no converted copy of
float32/float64 scores (peak extra memory: the bool masks plus a few tens of MB of counting temporaries).

Options of :func:`select_masks`:

* ``min_density``: every tensor keeps at least ``ceil(min_density · numel)`` entries (its own highest
  scores). With ``scope="global"`` the total stays exactly ``κ``: the floors are taken first, and the
  remaining ``κ − Σ floors`` entries go to the highest-scoring entries not yet kept, over all tensors
  together (one global threshold on what is left). This is the keep set of largest total score under the
  floors. With ``scope="layerwise"`` a tensor keeps ``max(round(numel · (1 − sparsity)), floor)``.
* ``invert=True``: keep the *lowest* scores (the "inverted scores" sanity check). Done on the bit patterns
  (``key = bits(+inf) − bits(score)``), which reverses the order exactly, equal scores staying equal; ties are
  still broken by (mapping order, flat index), earlier kept.

Layer collapse (:func:`check_collapse`, :func:`find_collapse`): a tensor with no kept entry, or an output
unit (row ``i`` of a linear weight ``[out, in]``, output channel ``i`` of a conv weight ``[c_out, c_in, ...]``)
whose incoming weights are all pruned: such a unit outputs a constant (its bias) whatever its input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Scope = Literal["global", "layerwise"]
CollapsePolicy = Literal["warn", "error", "ignore"]

_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
_FLOAT_OF = {torch.int32: torch.float32, torch.int64: torch.float64}


class LayerCollapseError(ValueError):
    """A parameter would be pruned entirely, or a unit keeps no input (raised when ``on_layer_collapse="error"``)."""


class LayerCollapseWarning(UserWarning):
    """A parameter is pruned entirely, or a unit keeps no input (``on_layer_collapse="warn"``, the default)."""


def keep_count(numel: int, sparsity: float) -> int:
    """``round(numel · (1 − sparsity))``, rounding half to even like Python's ``round``."""
    return int(round(numel * (1.0 - sparsity)))


def validate_sparsity(sparsity: float) -> float:
    """Check ``0 <= sparsity < 1`` and return it as a float."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"`sparsity` must be a float in [0, 1), got {type(sparsity).__name__}")
    if not (0.0 <= float(sparsity) < 1.0) or math.isnan(sparsity):
        raise ValueError(
            f"`sparsity` must be in [0, 1) (the fraction of weights removed; 0.9 keeps 10%), got {sparsity}"
        )
    return float(sparsity)


def _as_bits(t: Tensor) -> Tensor:
    return t.view(_INT_VIEW[t.dtype])


_DIGIT_BITS = 16  # radix of the selection: 2 passes over the scores for float32 keys, 4 for float64
_CHUNK = 1 << 20  # entries per counting step: the passes' temporaries stay under ~30 MB for any tensor size


def _kth_largest_key(keys: Sequence[Tensor], k: int) -> int:
    """The ``k``-th largest integer key (keys ``< 0`` never count; the caller ensures ``k`` of them are ``>= 0``).

    Radix selection, most significant 16-bit digit first: each pass counts the digits (``bincount``) of the
    entries that share the digits found so far, and picks the digit holding the ``k``-th largest.
    """
    width = 64 if keys[0].dtype == torch.int64 else 32
    prefix, remaining = 0, k
    for shift in range(width - _DIGIT_BITS, -1, -_DIGIT_BITS):
        counts = torch.zeros(1 << _DIGIT_BITS, dtype=torch.int64, device=keys[0].device)
        for t in keys:
            for chunk in t.reshape(-1).split(_CHUNK):  # bounded temporaries, whatever the tensor's size
                candidate = chunk >= 0
                if shift + _DIGIT_BITS < width:  # same higher digits as the prefix found so far
                    candidate &= (chunk >> (shift + _DIGIT_BITS)) == (prefix >> (shift + _DIGIT_BITS))
                digits = (chunk[candidate] >> shift) & ((1 << _DIGIT_BITS) - 1)
                counts += torch.bincount(digits, minlength=1 << _DIGIT_BITS)
        from_top = counts.flip(0).cumsum(0)
        index = int((from_top < remaining).sum())  # first position, from the top, reaching `remaining`
        digit = (1 << _DIGIT_BITS) - 1 - index
        remaining -= int(from_top[index]) - int(counts[digit])
        prefix |= digit << shift
    return prefix


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite, checked in chunks of ``_CHUNK`` entries.

    ``torch.isfinite`` on a whole float tensor allocates a temporary of the tensor's size and dtype (its
    absolute value) besides the bool results; by chunks the temporaries stay bounded.
    """
    return all(bool(torch.isfinite(chunk).all()) for chunk in t.reshape(-1).split(_CHUNK))


def sum_float64(t: Tensor) -> float:
    """The sum of all entries of ``t``, accumulated in float64 by chunks of ``_CHUNK`` entries.

    ``t.double().sum()`` and ``t.sum(dtype=torch.float64)`` both make a float64 copy of the whole tensor.
    """
    return sum(float(chunk.sum(dtype=torch.float64)) for chunk in t.reshape(-1).split(_CHUNK))


def kth_largest(tensors: Sequence[Tensor], k: int) -> Tensor:
    """The ``k``-th largest value (1-based) among all entries of non-negative float ``tensors``.

    Exact, by radix selection on bit patterns; no concatenation. Returns a 0-d tensor of the scores' dtype.
    """
    dtype = tensors[0].dtype
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} out of range for {total} entries")
    return torch.tensor(_kth_largest_key([_as_bits(t) for t in tensors], k), dtype=_INT_VIEW[dtype]).view(dtype)


def _top_k_keys(keys: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Keep exactly ``k`` entries of largest integer key (keys ``< 0`` are never kept), ties broken by (mapping
    order, flat index)."""
    if k == 0:
        return {name: torch.zeros_like(t, dtype=torch.bool) for name, t in keys.items()}
    threshold = _kth_largest_key(list(keys.values()), k)
    masks = {name: t > threshold for name, t in keys.items()}
    remaining = k - sum(int(torch.count_nonzero(m)) for m in masks.values())  # bool .sum() makes an int64 copy
    for name, t in keys.items():  # fill with threshold ties, earliest first
        if remaining == 0:
            break
        equal = (t == threshold).reshape(-1)
        n_equal = int(torch.count_nonzero(equal))
        if n_equal == 0:
            continue
        if n_equal <= remaining:
            masks[name] |= equal.view_as(t)
            remaining -= n_equal
        else:
            first = equal.nonzero().reshape(-1)[:remaining]
            masks[name].view(-1)[first] = True
            remaining = 0
    return masks


def _top_k_masks(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Keep exactly ``k`` entries across all tensors of ``scores``, ties broken by (mapping order, flat index)."""
    return _top_k_keys({name: _as_bits(s) for name, s in scores.items()}, k)


def _check_scores(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("`scores` must be a non-empty mapping of parameter name to score tensor")
    checked = {}
    for name, s in scores.items():
        if not isinstance(s, Tensor):
            raise TypeError(f"score {name!r} must be a tensor, got {type(s).__name__}")
        if not s.is_floating_point():
            s = s.float()
        if s.dtype not in _INT_VIEW:
            s = s.float()  # half and bfloat16 scores are compared in float32
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
    dtypes = {s.dtype for s in checked.values()}
    if len(dtypes) > 1:
        checked = {n: s.double() for n, s in checked.items()}
    return checked


def validate_min_density(min_density: float) -> float:
    """Check ``0 <= min_density <= 1`` and return it as a float."""
    if isinstance(min_density, bool) or not isinstance(min_density, (int, float)):
        raise TypeError(f"`min_density` must be a float in [0, 1], got {type(min_density).__name__}")
    if math.isnan(min_density) or not (0.0 <= float(min_density) <= 1.0):
        raise ValueError(
            f"`min_density` must be in [0, 1] (the fraction of each tensor kept at least; 0 = no floor), "
            f"got {min_density}"
        )
    return float(min_density)


def min_keep_count(numel: int, min_density: float) -> int:
    """``ceil(min_density · numel)``, computed on the decimal value of ``min_density`` (``0.1 · 30`` is 3, not 4)."""
    return min(numel, math.ceil(Fraction(repr(float(min_density))) * numel))


def _inverted(keys: Tensor) -> Tensor:
    inf_bits = int(_as_bits(torch.tensor(math.inf, dtype=_FLOAT_OF[keys.dtype])))
    return inf_bits - keys  # keys of non-negative finite floats lie in [0, inf_bits): the order reverses exactly


def _with_floors(keys: Mapping[str, Tensor], k: int, floors: Mapping[str, int]) -> dict[str, Tensor]:
    """Each tensor's ``floors[name]`` largest keys, then the ``k − Σ floors`` largest of all other entries."""
    forced = {name: _top_k_keys({name: t}, floors[name])[name] for name, t in keys.items()}
    rest = {name: t.masked_fill(forced[name], -1) for name, t in keys.items()}  # -1: never selected again
    chosen = _top_k_keys(rest, k - sum(floors.values()))
    return {name: chosen[name] | forced[name] for name in keys}


def select_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    *,
    scope: Scope = "global",
    on_layer_collapse: CollapsePolicy = "warn",
    on_dead_units: CollapsePolicy = "ignore",
    min_density: float = 0.0,
    invert: bool = False,
) -> dict[str, Tensor]:
    """Keep the highest-scoring entries; returns ``{name: bool mask}`` (``True`` = kept).

    Args:
        scores: ``{parameter name: non-negative float tensor}``; the higher, the more important.
        sparsity: fraction of entries removed, in ``[0, 1)``.
        scope: ``"global"`` (one threshold for all tensors, as SNIP; a layer may collapse) or ``"layerwise"``
            (each tensor keeps ``round(numel · (1 − sparsity))`` of its own entries).
        on_layer_collapse: what to do when a tensor keeps no entry (:func:`check_collapse`): ``"warn"``
            (default, :class:`LayerCollapseWarning`), ``"error"`` (:class:`LayerCollapseError`, nothing
            returned) or ``"ignore"``.
        on_dead_units: the same choice for output units of a weight that keep no input (a unit that outputs a
            constant). Default ``"ignore"``: global SNIP leaves some at ordinary sparsities (e.g. about 5% of
            LeNet-300-100's first layer at 90%); :func:`find_collapse` counts them.
        min_density: each tensor keeps at least ``ceil(min_density · numel)`` entries, in ``[0, 1]``; default 0
            (no floor). Global scope: the total stays ``round(m · (1 − sparsity))``, the rest of the budget
            going to the highest remaining scores over all tensors (see the module docstring).
        invert: keep the lowest scores instead (sanity check); default False.

    Raises:
        ValueError / TypeError: bad sparsity, scope or min_density, floors that exceed the global keep
            count, empty, negative or non-finite scores.
    """
    sparsity = validate_sparsity(sparsity)
    if scope not in ("global", "layerwise"):
        raise ValueError(f"`scope` must be 'global' or 'layerwise', got {scope!r}")
    for argument, value in (("on_layer_collapse", on_layer_collapse), ("on_dead_units", on_dead_units)):
        if value not in ("warn", "error", "ignore"):
            raise ValueError(f"`{argument}` must be 'warn', 'error' or 'ignore', got {value!r}")
    min_density = validate_min_density(min_density)
    if not isinstance(invert, bool):
        raise TypeError(f"`invert` must be a bool, got {type(invert).__name__}")
    checked = _check_scores(scores)
    keys = {name: _as_bits(s) for name, s in checked.items()}
    if invert:
        keys = {name: _inverted(t) for name, t in keys.items()}
    floors = {name: min_keep_count(t.numel(), min_density) for name, t in keys.items()}
    if scope == "global":
        total = sum(t.numel() for t in keys.values())
        k = keep_count(total, sparsity)
        if sum(floors.values()) > k:
            raise ValueError(
                f"`min_density`={min_density} asks for {sum(floors.values()):,} kept entries in all, more than the "
                f"{k:,} that `sparsity`={sparsity} keeps of {total:,}; lower `min_density` (at most about "
                f"{1 - sparsity:g}) or `sparsity`"
            )
        masks = _with_floors(keys, k, floors) if any(floors.values()) else _top_k_keys(keys, k)
    else:
        masks = {}
        for name, t in keys.items():
            masks.update(_top_k_keys({name: t}, max(keep_count(t.numel(), sparsity), floors[name])))
    check_masks(masks, on_layer_collapse, on_dead_units)
    return masks


def check_masks(
    masks: Mapping[str, Tensor], on_layer_collapse: CollapsePolicy = "warn", on_dead_units: CollapsePolicy = "ignore"
) -> Collapse:
    """Apply the two collapse policies to ``masks`` (tensors pruned entirely; dead output units); returns what
    :func:`find_collapse` found."""
    found = find_collapse(masks)
    check_collapse(masks, on_layer_collapse, units=False)
    if found.dead_units:
        check_collapse({name: masks[name] for name in found.dead_units}, on_dead_units)
    return found


class Collapse(NamedTuple):
    """What :func:`find_collapse` found: tensors with no kept entry, and weights with dead output units."""

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
    about them according to ``policy`` (one message for both kinds)."""
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
