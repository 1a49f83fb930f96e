"""N:M patterns: keep the ``n`` highest-scoring of every ``m`` consecutive weights along the input dimension.

A weight is read as its matrices ``[groups, rows, cols]`` (:class:`~lightning_prune_init.layouts.MatrixLayout`:
``cols`` is the input dimension, inputs times kernel taps for a conv, the first axis of a transformers
``Conv1D`` weight ``[in, out]``). Each row is cut into ``cols / m`` blocks of ``m`` consecutive entries, and each
block keeps exactly ``n`` (by score; ties: the earlier entry of the block). Every tensor's density is then
exactly ``n / m`` (sparsity ``1 − n/m``); "2:4" is the pattern NVIDIA's sparse tensor cores run
(``torch.sparse.to_sparse_semi_structured``).

Without a layout a tensor is read as PyTorch stores it: ``[d0, prod(rest)]``, blocks along the flattened
trailing dimensions (right for ``nn.Linear`` ``[out, in]`` and convs ``[c_out, c_in, *k]``, wrong for a
transformers ``Conv1D``: pass ``layouts=`` a :class:`~lightning_prune_init.parameters.ParameterSelection`).
A tensor whose input dimension is not a multiple of ``m``, or that has fewer than 2 dimensions, is refused
with a message naming it (leave it out of the selection, or pick an ``m`` that divides it).

>>> import torch
>>> scores = {"fc.weight": torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 0.0, 5.0, 0.0]])}
>>> nm_masks(scores, "2:4")["fc.weight"].int()
tensor([[1, 0, 1, 0],
        [1, 0, 1, 0]], dtype=torch.int32)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import Tensor

from lightning_prune_init.layouts import MatrixLayout
from lightning_prune_init.parameters import ParameterSelection

__all__ = ["is_n_m", "nm_masks", "parse_pattern", "pattern_misfits", "pattern_sparsity"]

Layouts = Union[ParameterSelection, Mapping[str, MatrixLayout], None]

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_DEFAULT = MatrixLayout("matrix")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"n:m"`` as ``(n, m)``, with ``1 <= n < m``.

    Raises:
        TypeError / ValueError: not a string of the form ``"n:m"`` with ``1 <= n < m``.

    >>> parse_pattern("2:4")
    (2, 4)
    """
    if not isinstance(pattern, str):
        raise TypeError(f"`pattern` must be a string 'n:m' such as '2:4', got {type(pattern).__name__} {pattern!r}")
    match = _PATTERN.match(pattern)
    n, m = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not match or not 1 <= n < m:
        raise ValueError(
            f"`pattern` must be 'n:m' with 1 <= n < m (keep n of every m consecutive weights), e.g. '2:4'; got {pattern!r}"
        )
    return n, m


def pattern_sparsity(pattern: str) -> float:
    """The sparsity ``1 − n/m`` every tensor has under ``pattern``.

    >>> pattern_sparsity("1:4")
    0.75
    """
    n, m = parse_pattern(pattern)
    return 1.0 - n / m


def layout_for(layouts: Layouts, name: str) -> MatrixLayout:
    """The layout of tensor ``name``: from a selection, from a mapping, else PyTorch's ``[d0, prod(rest)]``.

    >>> layout_for({"c.weight": MatrixLayout("transposed")}, "c.weight").kind, layout_for(None, "x").kind
    ('transposed', 'matrix')
    """
    if isinstance(layouts, ParameterSelection):
        return layouts.layout(name) if name in layouts else _DEFAULT
    if layouts is not None and name in layouts:
        return layouts[name]
    return _DEFAULT


def pattern_misfits(pattern: str, shapes: Mapping[str, Sequence[int]], layouts: Layouts = None) -> dict[str, str]:
    """The tensors ``pattern`` cannot apply to, each with why: ``"1-D"``, or ``"<cols> inputs"`` when its input
    dimension (``layout.matrix_shape(shape)[2]``) is not a multiple of ``m``. ``{}`` when all fit.

    >>> pattern_misfits("2:4", {"a": (8, 8), "b": (8, 6), "bias": (8,)})
    {'b': '6 inputs', 'bias': '1-D'}
    """
    _, m = parse_pattern(pattern)
    out = {}
    for name, shape in shapes.items():
        layout = layout_for(layouts, name)
        if len(shape) < 2 or not layout.is_matrix:
            out[name] = "1-D"
        elif layout.matrix_shape(tuple(shape))[2] % m:
            out[name] = f"{layout.matrix_shape(tuple(shape))[2]} inputs"
    return out


def _blocks(name: str, t: Tensor, layout: MatrixLayout, m: int, pattern: str) -> Tensor:
    """``t`` as ``[groups, rows, cols / m, m]`` blocks of ``m`` consecutive inputs (a copy for transposed layouts)."""
    misfit = pattern_misfits(pattern, {name: tuple(t.shape)}, {name: layout}).get(name)
    if misfit == "1-D":
        raise ValueError(
            f"pattern={pattern!r} applies to weight matrices, but {name!r} has shape {tuple(t.shape)} (fewer than 2 "
            "dimensions): leave it out of the selection (e.g. prune_biases=False)"
        )
    groups, rows, cols = layout.matrix_shape(t.shape)
    if misfit is not None:
        raise ValueError(
            f"pattern={pattern!r} needs the input dimension of every tensor to be a multiple of {m}, but {name!r} "
            f"(shape {tuple(t.shape)}, {layout.kind} layout) has {cols} inputs per row: leave it out of the selection "
            f"(`exclude`) or choose an m that divides {cols}"
        )
    return layout.matrices(t).reshape(groups, rows, cols // m, m)


def nm_masks(scores: Mapping[str, Tensor], pattern: str, layouts: Layouts = None, *, invert: bool = False) -> dict[str, Tensor]:
    """Bool masks keeping the ``n`` highest scores of every block of ``m`` consecutive inputs (``True`` = kept).

    Args:
        scores: ``{name: non-negative float tensor}`` (checked by :func:`select_masks`, which calls this).
        pattern: ``"n:m"``.
        layouts: a :class:`~lightning_prune_init.parameters.ParameterSelection` or ``{name: MatrixLayout}`` telling
            which axis is the input dimension; default: PyTorch's ``[out, in, ...]`` flattened after dim 0.
        invert: keep the ``n`` lowest scores of each block instead.

    Ties within a block: the earlier entry (lower input index) is kept, so the same scores give the same masks.

    Raises:
        ValueError: a tensor with fewer than 2 dimensions, or whose input dimension is not a multiple of ``m``
            (checked for every tensor before any mask is built).

    >>> nm_masks({"w": torch.tensor([[1.0, 1.0, 1.0, 1.0]])}, "1:2")["w"].tolist()
    [[True, False, True, False]]
    """
    n, m = parse_pattern(pattern)
    blocks = {name: _blocks(name, s, layout_for(layouts, name), m, pattern) for name, s in scores.items()}
    masks = {}
    for name, b in blocks.items():
        # a stable sort keeps equal scores in input order, so ties go to the earlier entry of the block
        order = torch.sort(b, dim=-1, descending=not invert, stable=True).indices[..., :n]
        kept = torch.zeros(b.shape, dtype=torch.bool, device=b.device).scatter_(-1, order, True)
        layout = layout_for(layouts, name)
        matrices = kept.reshape(b.shape[0], b.shape[1], -1)
        masks[name] = layout.from_matrices(matrices, scores[name].shape).contiguous()
    return masks


def is_n_m(mask: Tensor, pattern: str, layout: MatrixLayout | None = None) -> bool:
    """Whether ``mask`` keeps exactly ``n`` of every ``m`` consecutive inputs of each row (see :func:`nm_masks`).

    >>> is_n_m(torch.tensor([[True, False, False, True]]), "2:4"), is_n_m(torch.ones(1, 4, dtype=torch.bool), "2:4")
    (True, False)
    """
    n, m = parse_pattern(pattern)
    layout = layout or _DEFAULT
    if pattern_misfits(pattern, {"mask": tuple(mask.shape)}, {"mask": layout}):
        return False
    blocks = _blocks("mask", mask, layout, m, pattern)
    return bool((blocks.sum(dim=-1) == n).all())
