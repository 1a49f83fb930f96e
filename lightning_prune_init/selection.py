"""From scores to boolean masks: global or per-layer top-k with an exact keep count.

The keep count is ``κ = round(m · (1 − sparsity))`` where ``m`` counts the scored entries (all tensors
together for ``scope="global"``, each tensor alone for ``"layerwise"``). Ties at the threshold are broken
deterministically: among equal scores, entries come in the order of the ``scores`` mapping, then by flat
(row-major) index, and the earlier ones are kept. So the count is always exact and the same scores always
give the same masks, on any device and any rank.

The κ-th largest score is found by bisection on the bit pattern of the (non-negative) float scores, which
orders exactly like the values: about 32 counting passes over the scores, with no concatenated copy of
all scores (peak extra memory: one bool tensor the size of the largest score tensor).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

Scope = Literal["global", "layerwise"]
CollapsePolicy = Literal["warn", "error", "ignore"]

_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


class LayerCollapseError(ValueError):
    """A parameter would be pruned entirely (raised when ``on_layer_collapse="error"``)."""


class LayerCollapseWarning(UserWarning):
    """A parameter is pruned entirely (``on_layer_collapse="warn"``, the default)."""


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


def _count_at_least(tensors: Sequence[Tensor], bits: int) -> int:
    return sum(int((_as_bits(t) >= bits).sum()) for t in tensors)


def kth_largest(tensors: Sequence[Tensor], k: int) -> Tensor:
    """The ``k``-th largest value (1-based) among all entries of non-negative float ``tensors``.

    Exact, by bisection on bit patterns; no concatenation. Returns a 0-d tensor of the scores' dtype.
    """
    dtype = tensors[0].dtype
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} out of range for {total} entries")
    lo = 0  # invariant: count(bits >= lo) >= k
    hi = int(_as_bits(torch.tensor(math.inf, dtype=dtype)))  # bits of +inf
    if _count_at_least(tensors, hi) >= k:
        lo = hi
    while hi - lo > 1:  # invariant: count(>= lo) >= k > count(>= hi)
        mid = (lo + hi) // 2
        if _count_at_least(tensors, mid) >= k:
            lo = mid
        else:
            hi = mid
    return torch.tensor(lo, dtype=_INT_VIEW[dtype]).view(dtype)


def _top_k_masks(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Keep exactly ``k`` entries across all tensors of ``scores``, ties broken by (mapping order, flat index)."""
    if k == 0:
        return {name: torch.zeros_like(s, dtype=torch.bool) for name, s in scores.items()}
    tensors = list(scores.values())
    threshold = _as_bits(kth_largest(tensors, k).to(tensors[0].device))
    masks = {name: _as_bits(s) > threshold for name, s in scores.items()}
    remaining = k - sum(int(m.sum()) for m in masks.values())
    for name, s in scores.items():  # fill with threshold ties, earliest first
        if remaining == 0:
            break
        equal = (_as_bits(s) == threshold).reshape(-1)
        n_equal = int(equal.sum())
        if n_equal == 0:
            continue
        if n_equal <= remaining:
            masks[name] |= equal.view_as(s)
            remaining -= n_equal
        else:
            first = equal.nonzero().reshape(-1)[:remaining]
            masks[name].view(-1)[first] = True
            remaining = 0
    return masks


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
        if not bool(torch.isfinite(s).all()):
            raise ValueError(
                f"score {name!r} has non-finite values (NaN or inf): check the loss and the initialization; "
                "masks cannot be chosen from them"
            )
        if bool((s < 0).any()):
            raise ValueError(f"score {name!r} has negative values; scores must be >= 0 (take the absolute value)")
        checked[name] = (s + 0.0).contiguous()  # +0.0 turns -0.0 into +0.0, which has the smallest bit pattern
    dtypes = {s.dtype for s in checked.values()}
    if len(dtypes) > 1:
        checked = {n: s.double() for n, s in checked.items()}
    return checked


def select_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    *,
    scope: Scope = "global",
    on_layer_collapse: CollapsePolicy = "warn",
) -> dict[str, Tensor]:
    """Keep the highest-scoring entries; returns ``{name: bool mask}`` (``True`` = kept).

    Args:
        scores: ``{parameter name: non-negative float tensor}``; the higher, the more important.
        sparsity: fraction of entries removed, in ``[0, 1)``.
        scope: ``"global"`` (one threshold for all tensors, as SNIP; a layer may collapse) or ``"layerwise"``
            (each tensor keeps ``round(numel · (1 − sparsity))`` of its own entries).
        on_layer_collapse: what to do when a tensor keeps no entry: ``"warn"`` (default,
            :class:`LayerCollapseWarning`), ``"error"`` (:class:`LayerCollapseError`, nothing returned) or
            ``"ignore"``.

    Raises:
        ValueError / TypeError: bad sparsity or scope, empty, negative or non-finite scores.
    """
    sparsity = validate_sparsity(sparsity)
    if scope not in ("global", "layerwise"):
        raise ValueError(f"`scope` must be 'global' or 'layerwise', got {scope!r}")
    if on_layer_collapse not in ("warn", "error", "ignore"):
        raise ValueError(f"`on_layer_collapse` must be 'warn', 'error' or 'ignore', got {on_layer_collapse!r}")
    checked = _check_scores(scores)
    if scope == "global":
        total = sum(s.numel() for s in checked.values())
        masks = _top_k_masks(checked, keep_count(total, sparsity))
    else:
        masks = {}
        for name, s in checked.items():
            masks.update(_top_k_masks({name: s}, keep_count(s.numel(), sparsity)))
    check_collapse(masks, on_layer_collapse)
    return masks


def check_collapse(masks: Mapping[str, Tensor], policy: CollapsePolicy = "warn") -> list[str]:
    """Names of masks with no kept entry; warn or raise about them according to ``policy``."""
    collapsed = [name for name, m in masks.items() if m.numel() > 0 and not bool(m.any())]
    if collapsed and policy != "ignore":
        message = (
            f"{len(collapsed)} parameter(s) would be pruned entirely: {', '.join(collapsed)}. The network "
            "cannot pass a signal through them. Lower `sparsity`, use scope='layerwise', exclude them with "
            "`exclude`, or initialize for isometry (init='orthogonal') before scoring"
        )
        if policy == "error":
            raise LayerCollapseError(message)
        warnings.warn(message, LayerCollapseWarning, stacklevel=3)
    return collapsed
