"""The exact ``k`` largest of many score tensors: radix selection on the bit patterns, no concatenated copy.

Non-negative finite floats order exactly like their bit patterns read as integers, so the ``k``-th largest
score is found digit by digit: 16 bits at a time, 2 counting passes over the scores for float32 (4 for
float64), tensor by tensor and in chunks of ``_CHUNK`` entries (1M), with no concatenated copy and no converted
copy of float32/float64 scores (peak extra memory: the bool masks plus a few tens of MB of counting temporaries).

Ties at the threshold are broken deterministically: among equal keys, entries come in the order of the mapping,
then by flat (row-major) index, and the earlier ones are kept. The same scores always give the same masks, on
any device and any rank.

>>> import torch
>>> kth_largest([torch.tensor([0.5, 3.0]), torch.tensor([2.0, 1.0])], 2)
tensor(2.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["all_finite", "kth_largest", "sum_float64"]

_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
_FLOAT_OF = {torch.int32: torch.float32, torch.int64: torch.float64}
_DIGIT_BITS = 16  # radix of the selection: 2 passes over the scores for float32 keys, 4 for float64
_CHUNK = 1 << 20  # entries per counting step: the passes' temporaries stay under ~30 MB for any tensor size


def as_bits(t: Tensor) -> Tensor:
    """The float32/float64 tensor ``t`` viewed as int32/int64 (no copy): its sort keys when ``t >= 0``.

    >>> bool(as_bits(torch.tensor([2.0]))[0] > as_bits(torch.tensor([1.5]))[0])
    True
    """
    return t.view(_INT_VIEW[t.dtype])


def inverted(keys: Tensor) -> Tensor:
    """Keys whose order is the reverse of ``keys`` (integer views of non-negative finite floats), ties kept equal.

    ``bits(+inf) − key``: keys of non-negative finite floats lie in ``[0, bits(inf))``, so the result does too.

    >>> keys = inverted(as_bits(torch.tensor([1.0, 2.0])))
    >>> bool(keys[0] > keys[1])
    True
    """
    inf_bits = int(as_bits(torch.tensor(math.inf, dtype=_FLOAT_OF[keys.dtype])))
    return inf_bits - keys


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
    """Whether every entry of ``t`` is finite, checked in chunks of 1M entries.

    ``torch.isfinite`` on a whole float tensor allocates a temporary of the tensor's size and dtype (its
    absolute value) besides the bool results; by chunks the temporaries stay bounded.

    >>> all_finite(torch.tensor([1.0, float("inf")]))
    False
    """
    return all(bool(torch.isfinite(chunk).all()) for chunk in t.reshape(-1).split(_CHUNK))


def sum_float64(t: Tensor) -> float:
    """The sum of all entries of ``t``, accumulated in float64 by chunks of 1M entries.

    ``t.double().sum()`` and ``t.sum(dtype=torch.float64)`` both make a float64 copy of the whole tensor.

    >>> sum_float64(torch.full((3,), 0.5))
    1.5
    """
    return sum(float(chunk.sum(dtype=torch.float64)) for chunk in t.reshape(-1).split(_CHUNK))


def kth_largest(tensors: Sequence[Tensor], k: int) -> Tensor:
    """The ``k``-th largest value (1-based) among all entries of non-negative float32/float64 ``tensors``.

    Exact, by radix selection on bit patterns; no concatenation. Returns a 0-d tensor of the scores' dtype.

    Raises:
        ValueError: ``k`` outside ``[1, total number of entries]``.

    >>> kth_largest([torch.tensor([[1.0, 4.0], [4.0, 2.0]])], 3)
    tensor(2.)
    """
    dtype = tensors[0].dtype
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"`k`={k} is out of range for {total} entries: it must be in [1, {total}]")
    return torch.tensor(_kth_largest_key([as_bits(t) for t in tensors], k), dtype=_INT_VIEW[dtype]).view(dtype)


def top_k_keys(keys: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Bool masks keeping exactly ``k`` entries of largest integer key over all tensors of ``keys``.

    Keys ``< 0`` are never kept (the caller ensures at least ``k`` keys are ``>= 0``); ties at the threshold are
    broken by (mapping order, flat index), earlier kept.

    >>> top_k_keys({"a": torch.tensor([5, 7]), "b": torch.tensor([7, 1])}, 2)
    {'a': tensor([False,  True]), 'b': tensor([ True, False])}
    """
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
