"""What the isometry repair optimizes: the orthogonality error of a weight's matrices, and its lowest value.

A weight is read as a stack of matrices ``M_g`` (``[G, rows, cols]``, :class:`~lightning_prune_init.layouts.MatrixLayout`:
a grouped conv is one matrix per group, transformers ``Conv1D`` its transpose, an attention ``in_proj_weight``
three blocks). With the mask ``C`` applied, the error of the weight is

    error(W) = sqrt( Σ_g ‖ M_g M_gᵀ − gain² I ‖_F² )       (M_g the matrices of C ⊙ W, I is rows x rows)

For one matrix (``G = 1``: a linear or ungrouped conv weight reshaped to ``[c_out, c_in·k·k]``) this is SPP's
layer term ``‖(C ⊙ W)(C ⊙ W)ᵀ − I‖_F`` (not squared). For a grouped conv it is the same term on the layer's
dense equivalent: its Gram over output units is block diagonal, so the off-group blocks contribute nothing.
``target="reachable"`` takes each Gram on the smaller side (``min(rows, cols)`` square), which an exactly
orthogonal matrix brings to 0 whatever its shape.

The lowest error a mask allows is ``gain² · sqrt(Σ_g (side − r_g))``, ``side`` the Gram's size and ``r_g``
the structural rank of matrix ``g``'s mask (the largest number of kept entries no two of which share a row
or a column): ``M_g M_gᵀ`` has rank at most ``r_g``, and putting ``gain`` on a maximum matching attains the
bound. See ``docs/benchmarks_isometry.md``.

>>> import torch
>>> round(float(orthogonality_error(torch.eye(3))), 6), best_possible_error(torch.empty(5, 3))
(0.0, 1.4142135623730951)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_bool_masks, check_choice, check_number
from lightning_prune_init.layouts import MatrixLayout
from lightning_prune_init.parameters import ParameterSelection, as_selection

__all__ = [
    "TARGETS",
    "best_possible_error",
    "matrix_best_errors",
    "orthogonality_error",
    "orthogonality_errors",
    "resolve_masks",
    "structural_rank",
    "work_dtype",
]

#: Accepted values of ``target``: ``"identity"`` (each ``rows x rows`` Gram against ``gain² I``, the paper's)
#: or ``"reachable"`` (each Gram on the smaller side, ``min(rows, cols)`` square).
TARGETS: tuple[str, ...] = ("identity", "reachable")

#: The layout of a bare tensor: one matrix ``[d0, prod(rest)]`` (a linear or ungrouped conv weight).
PLAIN = MatrixLayout("matrix")


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of the Gram computations for a weight of ``dtype``: its own, at least float32.

    >>> work_dtype(torch.bfloat16), work_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def check_layout(layout: Any, shape: torch.Size | tuple[int, ...], argument: str = "layout") -> MatrixLayout:
    """``layout`` (``None``: :data:`PLAIN`) if it gives matrices for ``shape``, else ``TypeError``/``ValueError``.

    >>> check_layout(None, (4, 3)).kind
    'matrix'
    """
    if layout is None:
        layout = PLAIN
    if not isinstance(layout, MatrixLayout):
        raise TypeError(
            f"`{argument}` must be a MatrixLayout (lightning_prune_init.layouts.layout_of(module, 'weight')) or None, "
            f"got {type(layout).__name__}"
        )
    if len(shape) < 2 or not layout.is_matrix:
        raise ValueError(
            f"`{argument}` {layout.kind!r} gives no matrix for shape {tuple(shape)}: the isometry error needs a "
            "weight of at least 2 dimensions ([out, in] or [c_out, c_in/groups, *kernel])"
        )
    layout.matrix_shape(shape)  # raises when the groups do not divide the shape
    return layout


def masked_matrices(weight: Tensor, mask: Tensor | None, layout: MatrixLayout | None = None) -> Tensor:
    """``C ⊙ W`` as its matrices ``[G, rows, cols]``, detached, in :func:`work_dtype` (checks every argument).

    >>> masked_matrices(torch.ones(4, 2, 3), None, MatrixLayout("conv", groups=2, kernel=(3,))).shape
    torch.Size([2, 2, 6])
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"`weight` must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"`weight` must be floating point, got {weight.dtype}")
    layout = check_layout(layout, weight.shape)
    w = weight.detach().to(work_dtype(weight.dtype))
    if mask is not None:
        check_bool_masks({"mask": mask}, {"mask": weight.shape}, argument="mask", owner="`weight`")
        w = w * mask.to(device=w.device, dtype=w.dtype)
    return layout.matrices(w)


def orthogonality_error(
    weight: Tensor, mask: Tensor | None = None, *, layout: MatrixLayout | None = None, target: str = "identity",
    gain: float = 1.0,
) -> Tensor:
    """The isometry error ``sqrt(Σ_g ‖M_g M_gᵀ − gain² I‖_F²)`` of the matrices ``M_g`` of ``C ⊙ W``.

    Args:
        weight: a tensor of at least 2 dimensions.
        mask: optional ``torch.bool`` tensor of ``weight``'s shape, ``True`` = kept; ``None`` = dense.
        layout: how ``weight`` reads as matrices (``select_parameters(model).layout(name)`` or
            :func:`~lightning_prune_init.layouts.layout_of`); ``None`` (default): one matrix
            ``[d0, prod(rest)]``, SPP's reshape of a linear or ungrouped conv weight.
        target: ``"identity"`` (default): each ``rows x rows`` Gram over output units, as in the paper;
            ``"reachable"``: each Gram on the smaller side. The two agree when ``rows <= cols``.
        gain: the target is ``gain² I`` (> 0, default 1).

    Returns:
        A 0-dim tensor (float32, or float64 for float64 weights) on ``weight``'s device; differentiable in
        neither argument (the weight is detached).

    >>> w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> float(orthogonality_error(w))  # ‖diag(4, 1) − I‖_F
    3.0
    >>> float(orthogonality_error(torch.ones(4, 1), target="reachable"))  # the 1x1 Gram [4] against 1
    3.0
    """
    target = check_choice("target", target, TARGETS)
    gain = check_number("gain", gain, minimum=0.0, minimum_inclusive=False)
    matrices = masked_matrices(weight, mask, layout)
    return torch.sqrt(squared_errors(matrices, target, gain).sum())


def squared_errors(matrices: Tensor, target: str, gain: float) -> Tensor:
    """``‖M_g M_gᵀ − gain² I‖_F²`` per matrix ``[G]``, computed on the smaller side of each matrix.

    ``‖M Mᵀ − g² I_r‖² = ‖Mᵀ M − g² I_c‖² + g⁴ (r − c)`` when ``c < r``: same value, fewer operations. Under
    ``"reachable"`` the constant is dropped.

    >>> squared_errors(torch.ones(1, 2, 1), "identity", 1.0).tolist()  # Gram [[1, 1], [1, 1]] against I
    [2.0]
    """
    _, rows, cols = matrices.shape
    m = matrices if rows <= cols else matrices.mT
    gram = torch.bmm(m, m.mT)
    gram.diagonal(dim1=-2, dim2=-1).sub_(gain**2)
    squared = gram.pow(2).sum((-2, -1))
    if target == "identity" and rows > cols:
        squared = squared + gain**4 * (rows - cols)
    return squared


def structural_rank(mask: Tensor) -> int:
    """The structural rank of a 2-D mask: the most ``True`` entries no two of which share a row or a column.

    It bounds the rank of ``(C ⊙ W)`` for every ``W`` (maximum bipartite matching; scipy's
    ``structural_rank`` when scipy is installed, a plain augmenting-path search otherwise).

    >>> structural_rank(torch.tensor([[True, True], [False, False]]))
    1
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise TypeError(f"`mask` must be a 2-D torch.bool tensor, got {mask!r:.80}")
    rows, cols = mask.shape
    if rows == 0 or cols == 0:
        return 0
    if bool(mask.all()):
        return min(rows, cols)
    if rows == 1 or cols == 1:
        return int(bool(mask.any()))
    m = mask.detach().to("cpu")
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import structural_rank as scipy_rank
    except ImportError:  # scipy comes with scikit-learn; keep a plain fallback all the same
        return _matching_size(m)
    return int(scipy_rank(csr_matrix(m.numpy().astype("int8"))))


def _matching_size(mask: Tensor) -> int:
    """Maximum bipartite matching by augmenting paths (Kuhn); rows on the smaller side."""
    if mask.shape[0] > mask.shape[1]:
        mask = mask.T
    adjacency = [row.nonzero().flatten().tolist() for row in mask]
    match_of_col: dict[int, int] = {}

    def augment(row: int, seen: set[int]) -> bool:
        stack = [(row, iter(adjacency[row]))]
        path: list[tuple[int, int]] = []
        while stack:
            r, it = stack[-1]
            for c in it:
                if c in seen:
                    continue
                seen.add(c)
                path.append((r, c))
                if c not in match_of_col:
                    for rr, cc in path:
                        match_of_col[cc] = rr
                    return True
                stack.append((match_of_col[c], iter(adjacency[match_of_col[c]])))
                break
            else:
                stack.pop()
                if path:
                    path.pop()
        return False

    return sum(augment(r, set()) for r in range(mask.shape[0]))


def matrix_best_errors(
    shape: torch.Size | tuple[int, ...],
    mask: Tensor | None,
    layout: MatrixLayout,
    target: str,
    gain: float,
) -> list[float]:
    """The lowest error of each matrix, ``gain² · sqrt(side − r_g)`` (``side``: ``rows`` under ``"identity"``,
    ``min(rows, cols)`` under ``"reachable"``; ``r_g``: :func:`structural_rank` of its mask). Unchecked.

    >>> matrix_best_errors((6, 1, 1), None, MatrixLayout("conv", groups=3, kernel=(1,)), "identity", 1.0)
    [1.0, 1.0, 1.0]
    """
    groups, rows, cols = layout.matrix_shape(shape)
    side = rows if target == "identity" else min(rows, cols)
    if mask is None:
        ranks = [min(rows, cols)] * groups
    else:
        kept = layout.matrices(mask.detach().to("cpu"))
        ranks = [structural_rank(m) for m in kept]
    return [gain**2 * math.sqrt(side - r) for r in ranks]


def best_possible_error(
    weight: Tensor, mask: Tensor | None = None, *, layout: MatrixLayout | None = None, target: str = "identity",
    gain: float = 1.0,
) -> float:
    """The lowest :func:`orthogonality_error` any weight of this shape, layout and mask can have.

    ``gain² · sqrt(Σ_g (side − r_g))``, ``side`` the Gram's size (``rows`` for ``"identity"``,
    ``min(rows, cols)`` for ``"reachable"``) and ``r_g`` the structural rank of matrix ``g``'s mask: 0 for a dense
    weight with ``rows <= cols``, ``sqrt(rows − cols)`` for a dense ``[rows, cols]`` weight with ``cols < rows``
    under ``"identity"``, at least ``sqrt(units removed)`` when pruning removed whole output units. Only
    ``weight``'s shape is used. Arguments as in :func:`orthogonality_error`.

    >>> best_possible_error(torch.empty(64, 3, 3, 3))  # a first conv: 27 inputs, 64 outputs
    6.082762530298219
    >>> best_possible_error(torch.empty(2, 3), torch.tensor([[True, False, False], [True, False, False]]))
    1.0
    """
    target = check_choice("target", target, TARGETS)
    gain = check_number("gain", gain, minimum=0.0, minimum_inclusive=False)
    if not isinstance(weight, Tensor):
        raise TypeError(f"`weight` must be a torch.Tensor, got {type(weight).__name__}")
    layout = check_layout(layout, weight.shape)
    if mask is not None:
        check_bool_masks({"mask": mask}, {"mask": weight.shape}, argument="mask", owner="`weight`")
    bests = matrix_best_errors(weight.shape, mask, layout, target, gain)
    return math.sqrt(sum(b * b for b in bests))


def resolve_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """``masks`` checked against ``model`` (keys: parameter names, any name of a tied tensor); ``None``: the masks
    attached to ``model`` (``apply_masks``), none if there are none. Keys are returned as given.

    >>> list(resolve_masks(torch.nn.Linear(2, 2), {"weight": torch.ones(2, 2, dtype=torch.bool)}))
    ['weight']
    """
    if masks is None:
        from lightning_prune_init.masks import get_masks

        return dict(get_masks(model))
    if isinstance(masks, Mapping) and not masks:
        return {}
    shapes = {name: p.shape for name, p in model.named_parameters(remove_duplicate=False)}
    return check_bool_masks(masks, shapes, owner=type(model).__name__)


def orthogonality_errors(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    *,
    parameters: ParameterSelection | str | list[str] | None = None,
    target: str = "identity",
    gain: float = 1.0,
) -> dict[str, float]:
    """:func:`orthogonality_error` of every selected matrix weight of ``model``, each read in its own layout.

    Args:
        model: the module.
        masks: ``{parameter name: torch.bool tensor}``; default: the masks attached to ``model`` (dense where
            none).
        parameters: the selection (:func:`~lightning_prune_init.parameters.select_parameters`), a glob pattern
            or a list of them (``include``), or ``None`` (the default rule). Tensors of fewer than 2 dimensions
            are left out.
        target, gain: as in :func:`orthogonality_error`.

    Returns:
        ``{canonical parameter name: error}``.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.eye(3))
    >>> orthogonality_errors(net)
    {'0.weight': 0.0}
    """
    selection = as_selection(model, parameters)
    resolved = resolve_masks(model, masks)
    by_canonical = {selection.canonical(k): m for k, m in resolved.items() if k in selection}
    return {
        name: float(orthogonality_error(selection[name], by_canonical.get(name), layout=entry.layout, target=target,
                                        gain=gain))
        for name, entry in selection.matrices().items()
    }
