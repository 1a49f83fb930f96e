"""What the solvers see of a matrix: only its kept rows and columns, the wide way round, and a constant.

A row of ``C ⊙ M`` with no kept entry (an output unit pruned away) is 0 for every weight the mask allows: its
Gram row and column are 0, so it adds exactly ``gain⁴`` to ``‖M Mᵀ − gain² I‖²`` and nothing to the gradient.
A column with no kept entry adds nothing at all. At 90% sparsity such rows and columns are common (in a
SNIP-pruned resnet18, a third of the rows and half of the columns of the last convs), and dropping them
cuts the cost of every step several times without changing a single kept value. With ``s`` the side of the
Gram (``rows``; ``cols`` for a tall matrix under ``target="reachable"``) and ``P`` the ``[s', t']`` matrix of kept
rows and columns in that orientation:

    ‖O Oᵀ − g² I_s‖² = ‖P Pᵀ − g² I_s'‖² + g⁴ (s − s')
                     = ‖Pᵀ P − g² I_t'‖² + g⁴ (s − t')        when t' < s' (the Gram on the smaller side)

so the solvers work on the wide one of ``P``/``Pᵀ`` plus a constant. :func:`join` puts the values back.

>>> kept = torch.tensor([[[True, False, True], [False, False, False]]])
>>> piece = split(torch.ones(1, 2, 3) * kept, kept, "identity", 1.0)[0]
>>> tuple(piece.a.shape), piece.constant
((1, 2), 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Piece", "join", "split"]


@dataclass
class Piece:
    """One matrix reduced to its kept rows and columns (made by :func:`split`, undone by :func:`join`).

    Attributes:
        a: ``[k, L]`` (``k <= L``), the kept values.
        c: ``[k, L]``, the mask as 0/1 in ``a``'s dtype.
        constant: what the dropped rows and the tall side add to the squared error.
        rows, cols: indices of the kept rows and columns of the Gram-side orientation ``O`` (``None``: all).
        gram_on_cols: ``O = Mᵀ`` (the Gram over columns: a tall matrix under ``"reachable"``).
        flipped: ``a`` is ``Pᵀ``.
        shape: ``O``'s shape ``(s, t)``.
    """

    a: Tensor
    c: Tensor
    constant: float
    rows: Tensor | None
    cols: Tensor | None
    gram_on_cols: bool
    flipped: bool
    shape: tuple[int, int]


def split(matrices: Tensor, kept: Tensor | None, target: str, gain: float, compact: bool = True) -> list[Piece]:
    """The :class:`Piece` of each matrix of ``matrices`` ``[G, rows, cols]`` (masked values) under the bool mask
    ``kept`` (same shape; ``None``: dense). ``compact=False`` keeps every row and column (only the orientation
    changes), so the arithmetic of the solver is that of the whole matrix."""
    _, r, c = matrices.shape
    gram_on_cols = target == "reachable" and r > c
    pieces = []
    for g in range(len(matrices)):
        o = matrices[g].mT if gram_on_cols else matrices[g]
        s, t = o.shape
        k = None if kept is None else (kept[g].mT if gram_on_cols else kept[g])
        if k is None or not compact:
            rows = cols = None
            p, cp = o, (torch.ones_like(o) if k is None else k.to(o.dtype))
        else:
            rows, cols = k.any(1).nonzero().flatten(), k.any(0).nonzero().flatten()
            p = o[rows][:, cols]
            cp = k[rows][:, cols].to(o.dtype)
        flipped = p.shape[0] > p.shape[1]
        constant = gain**4 * (s - (p.shape[1] if flipped else p.shape[0]))
        pieces.append(Piece(p.mT if flipped else p, cp.mT if flipped else cp, constant, rows, cols, gram_on_cols,
                            flipped, (s, t)))
    return pieces


def join(pieces: Sequence[Piece], values: Sequence[Tensor]) -> Tensor:
    """The full matrices ``[G, rows, cols]`` with the kept rows and columns taken from ``values`` (``a``-shaped,
    one per piece) and 0 elsewhere.

    >>> kept = torch.tensor([[[True, False], [False, False]]])
    >>> pieces = split(2 * kept.float(), kept, "identity", 1.0)
    >>> join(pieces, [p.a for p in pieces]).tolist()
    [[[2.0, 0.0], [0.0, 0.0]]]
    """
    out = []
    for piece, v in zip(pieces, values):
        p = v.mT if piece.flipped else v
        if piece.rows is None:
            o = p
        else:
            o = p.new_zeros(piece.shape)
            o[piece.rows[:, None], piece.cols] = p
        out.append(o.mT if piece.gram_on_cols else o)
    return torch.stack(out)
