"""Haar-distributed matrices with orthonormal rows or columns, a stack of them at once."""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []


def haar_orthonormal(
    groups: int, rows: int, cols: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``[groups, rows, cols]``: independent Haar matrices with orthonormal columns (``rows >= cols``) or rows.

    Each is the Q factor of a Gaussian ``max x min`` matrix with the signs of R's diagonal made positive (QR is
    unique only up to those signs; fixing them makes Q Haar distributed), transposed when ``rows < cols``.
    The Gaussians are drawn in one call, group after group, so ``groups=1`` draws exactly what a single matrix
    drew in earlier versions (``torch.linalg.qr`` of a batch of one gives the same bits).
    """
    gaussian = torch.randn(groups, max(rows, cols), min(rows, cols), generator=generator, device=device, dtype=dtype)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
    q = q * signs.unsqueeze(-2)
    return q if rows >= cols else q.transpose(-2, -1)
