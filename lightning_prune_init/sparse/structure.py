"""The sparse structure of one masked weight, built once: CSR indices of ``W`` and of ``Wᵀ``.

A mask ``[out, in]`` (``True`` = kept) fixes which ``nnz`` entries exist. The kept values are stored compactly,
in CSR order (row by row, inputs ascending: the row-major order of the kept entries, as ``weight[mask]`` gives
them). :class:`CsrStructure` holds, for the whole run:

* ``crow [out + 1]``, ``col [nnz]``: the CSR structure of ``W`` (forward ``y = W x``, and the weight gradient at
  the kept entries only);
* ``t_crow [in + 1]``, ``t_col [nnz]``, ``perm [nnz]``: the CSR structure of ``Wᵀ`` and the permutation taking
  the values from ``W``'s order to ``Wᵀ``'s (input gradient ``dx = Wᵀ dy``): ``values_t = values[perm]``.

Indices (and the permutation) are int32 when ``out · in < 2³¹`` (half the memory; the kernels take them as they
are), else int64: 12 bytes per kept weight besides its value (24 with int64), plus ``out + in + 2`` row
pointers.
Nothing here is ``numel``-sized except on request: :meth:`CsrStructure.mask` and :meth:`CsrStructure.to_dense`
build dense tensors for readers (state dicts, monitors).

>>> import torch
>>> s = CsrStructure.from_mask(torch.tensor([[True, False, True], [False, True, False]]))
>>> s.nnz, s.crow.tolist(), s.col.tolist(), s.perm.tolist()
(3, [0, 2, 3], [0, 2, 1], [0, 2, 1])
>>> s.to_dense(torch.tensor([1.0, 2.0, 3.0]))
tensor([[1., 0., 2.],
        [0., 3., 0.]])
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Callable

import torch
from torch import Tensor

__all__ = ["CsrStructure"]

# torch warns once per process that CSR support is "beta"; the kernels used here (CSR × dense, sampled_addmm)
# are its tested core. The filter matches that one message only.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


@dataclass
class CsrStructure:
    """CSR indices of a fixed ``[out, in]`` sparsity pattern and of its transpose (see the module docstring).

    Attributes:
        shape: ``(out, in)``.
        crow, col: CSR row pointers ``[out + 1]`` and column indices ``[nnz]`` of ``W``.
        t_crow, t_col: the same for ``Wᵀ`` (``[in + 1]``, ``[nnz]``).
        perm: ``[nnz]``, ``values_t = values[perm]``.

    >>> s = CsrStructure.from_mask(torch.tensor([[False, True], [True, True]]))
    >>> s.shape, s.nnz, s.density, s.t_crow.tolist(), s.t_col.tolist()
    ((2, 2), 3, 0.75, [0, 1, 3], [1, 0, 1])
    """

    shape: tuple[int, int]
    crow: Tensor
    col: Tensor
    t_crow: Tensor
    t_col: Tensor
    perm: Tensor

    @classmethod
    def from_mask(cls, mask: Tensor) -> CsrStructure:
        """Build the structure of a 2-D bool ``mask`` (on the mask's device)."""
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"a CSR structure needs a 2-D bool mask, got {mask.dtype} of shape {tuple(mask.shape)}")
        out, inp = mask.shape
        index = torch.int32 if out * inp < 2**31 else torch.int64
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: the CSR order of the values
        perm = torch.argsort(cols * out + rows)  # column-major order of the same entries: Wᵀ's CSR order
        return cls(
            shape=(int(out), int(inp)),
            crow=_pointers(rows, out).to(index),
            col=cols.to(index),
            t_crow=_pointers(cols, inp).to(index),
            t_col=rows[perm].to(index),
            perm=perm.to(index),
        )

    @property
    def nnz(self) -> int:
        """Number of kept entries."""
        return int(self.col.numel())

    @property
    def density(self) -> float:
        """``nnz / (out · in)``."""
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @property
    def device(self) -> torch.device:
        return self.col.device

    def csr(self, values: Tensor) -> Tensor:
        """``W`` as a sparse CSR tensor on ``values`` (no copy, no check: the structure is valid by construction)."""
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, check_invariants=False)

    def csr_t(self, values: Tensor) -> Tensor:
        """``Wᵀ`` as a sparse CSR tensor (one ``nnz``-sized gather of the values)."""
        return torch.sparse_csr_tensor(
            self.t_crow, self.t_col, values.index_select(0, self.perm), (self.shape[1], self.shape[0]),
            check_invariants=False,
        )

    def flat_index(self) -> Tensor:
        """The row-major flat index ``row · in + col`` of each kept entry, int64 ``[nnz]``."""
        rows = torch.repeat_interleave(
            torch.arange(self.shape[0], device=self.device), (self.crow[1:] - self.crow[:-1]).long()
        )
        return rows * self.shape[1] + self.col.long()

    def gather(self, dense: Tensor) -> Tensor:
        """The kept entries of a dense ``[out, in]`` tensor, in CSR order (a new ``[nnz]`` tensor)."""
        return dense.reshape(-1)[self.flat_index().to(dense.device)]

    def to_dense(self, values: Tensor) -> Tensor:
        """A dense ``[out, in]`` tensor with ``values`` at the kept entries and exact zeros elsewhere.

        Differentiable with respect to ``values`` (a scatter), so code that reads a dense weight still trains.
        """
        dense = values.new_zeros(self.shape[0] * self.shape[1])
        return dense.index_put((self.flat_index(),), values).view(self.shape)

    def mask(self) -> Tensor:
        """The bool mask ``[out, in]`` (``True`` = kept)."""
        mask = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool, device=self.device)
        return mask.index_fill_(0, self.flat_index(), True).view(self.shape)

    def apply(self, fn: Callable[[Tensor], Tensor]) -> CsrStructure:
        """A structure whose index tensors are ``fn(t)``: device moves follow, index dtypes never change."""
        moved = (getattr(self, f.name) for f in fields(self) if f.name != "shape")
        return CsrStructure(self.shape, *(fn(t).to(t.dtype) for t in moved))


def _pointers(rows: Tensor, n: int) -> Tensor:
    """CSR pointers ``[n + 1]`` of sorted row indices: ``pointers[i + 1] − pointers[i]`` entries in row ``i``."""
    pointers = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=pointers[1:])
    return pointers
