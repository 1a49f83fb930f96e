"""One sparse linear map, forward and backward, touching only the ``nnz`` kept weights.

For ``y = x Wᵀ + b`` with ``W`` ``[out, in]`` held as its kept values in CSR order
(:class:`~lightning_prune_init.sparse.structure.CsrStructure`) and ``x`` flattened to ``[N, in]``:

* forward: ``yᵀ = W xᵀ`` (``torch.sparse.mm``, CSR × dense), then ``+ b``;
* input gradient: ``dxᵀ = Wᵀ dyᵀ`` with ``Wᵀ``'s CSR structure built once (only ``values[perm]`` per step);
* weight gradient at the kept entries only: ``dW[i, j] = Σ_n dy[n, i] x[n, j]`` for kept ``(i, j)``
  (``torch.sparse.sampled_addmm``): an ``nnz``-sized gradient for the ``nnz``-sized parameter;
* bias gradient: ``Σ_n dy[n]``.

Two layouts of the activations, chosen by :func:`batch_major` from the shapes alone (the same on every rank):

* feature-major (few rows ``N``, densities above 2%): the products run on ``xᵀ`` ``[in, N]`` and ``dyᵀ``
  (row-major MKL, fastest there), one copy of the activations each way; ``xᵀ`` is kept for the weight gradient
  (one activation-sized buffer per layer until the backward);
* batch-major (``N >= 1024`` or densities up to 2%): the products read ``x`` and ``dy`` as they are and write the
  outputs in place (MKL's column-major path), no copy in the forward.

Outputs and input gradients are contiguous ``[..., features]``: a transposed view would save a copy, but
elementwise ops mixing it with contiguous tensors (the ReLU backward) run several times slower on such mixed
strides, and ``.view`` in user code needs contiguous outputs.

>>> import torch
>>> from lightning_prune_init.sparse.structure import CsrStructure
>>> mask = torch.tensor([[True, False], [True, True]])
>>> w = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
>>> structure = CsrStructure.from_mask(mask)
>>> sparse_linear(torch.tensor([[1.0, 1.0]]), structure.gather(w), None, structure)
tensor([[1., 5.]])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_prune_init.sparse.structure import CsrStructure

__all__ = ["batch_major", "sparse_linear"]


def batch_major(n: int, density: float, device: torch.device) -> bool:
    """Whether the CPU kernels should read and write the activations as they are, ``[N, features]``
    (MKL's column-major layout), rather than transposed copies ``[features, N]`` (row-major): on this project's
    CPU the former wins from ``N >= 1024`` rows, or at densities up to 2% (docs/sparse.md). A
    function of the shapes only, so every rank and every run picks the same.

    >>> batch_major(256, 0.05, torch.device("cpu")), batch_major(1024, 0.05, torch.device("cpu"))
    (False, True)
    """
    return device.type == "cpu" and (n >= 1024 or density <= 0.02)


def _mm(csr: Tensor, dense_t: Tensor, bias: Tensor | None, transposed_out: bool) -> Tensor:
    """``csr @ dense_t (+ bias[:, None])``; with ``transposed_out`` written into the transpose of a contiguous
    ``[N, rows]`` tensor (MKL's column-major path: ``dense_t`` may then be the transposed view of ``[N, cols]``)."""
    rows, n = csr.shape[0], dense_t.shape[1]
    if not transposed_out:
        out = torch.sparse.mm(csr, dense_t)
        return out if bias is None else out.add_(bias[:, None])
    out = torch.empty(n, rows, dtype=dense_t.dtype, device=dense_t.device)
    if bias is None:
        torch.addmm(dense_t.new_zeros(()), csr, dense_t, beta=0.0, out=out.t())
    else:
        torch.addmm(bias[:, None].expand(rows, n), csr, dense_t, out=out.t())
    return out


class _SparseLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` with ``W`` in CSR form; gradients for ``x``, the kept values and ``b``."""

    @staticmethod
    def forward(
        ctx: Any, x2: Tensor, values: Tensor, bias: Tensor | None, structure: CsrStructure, batch_major: bool
    ) -> Tensor:
        with torch.autocast(x2.device.type, enabled=False):  # the CSR kernels take the values' dtype only
            if batch_major:  # no copy of the activations: MKL reads xᵀ and writes yᵀ column-major
                y = _mm(structure.csr(values), x2.t(), bias, transposed_out=True)
                saved = x2
            else:  # xᵀ [in, N] contiguous, kept for the weight gradient (its kernel reads it twice as fast as x)
                saved = x2.t().contiguous()
                yt = _mm(structure.csr(values), saved, None, transposed_out=False)
                y = torch.empty(yt.shape[1], yt.shape[0], dtype=yt.dtype, device=yt.device)
                if bias is None:
                    y.copy_(yt.t())
                else:
                    torch.add(yt.t(), bias, out=y)  # transpose and bias in one pass
        ctx.save_for_backward(saved, values)
        ctx.structure, ctx.batch_major, ctx.has_bias = structure, batch_major, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        saved, values = ctx.saved_tensors
        structure: CsrStructure = ctx.structure
        gx = gv = gb = None
        with torch.autocast(gy.device.type, enabled=False):
            gy = gy.to(values.dtype)
            gyt = gy.t().contiguous()  # [out, N]: the weight gradient's kernel reads its rows
            if ctx.needs_input_grad[0]:
                if ctx.batch_major:
                    gx = _mm(structure.csr_t(values), gy.contiguous().t(), None, transposed_out=True)
                else:
                    gx = _mm(structure.csr_t(values), gyt, None, transposed_out=False).t().contiguous()
            if ctx.needs_input_grad[1]:
                # dW[i, j] = <dyᵀ[i], xᵀ[j]> at the kept (i, j) only (the kernel reads mat2 transposed)
                x_t = saved.t() if not ctx.batch_major else saved
                gv = torch.sparse.sampled_addmm(structure.csr(values), gyt, x_t, beta=0.0).values()
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = gyt.sum(dim=1)
        return gx, gv, gb, None, None


def sparse_linear(x: Tensor, values: Tensor, bias: Tensor | None, structure: CsrStructure) -> Tensor:
    """``x Wᵀ + b`` for a sparse ``W`` given by its kept ``values`` (CSR order) and ``structure``.

    Args:
        x: input ``[..., in]`` (cast to the values' dtype, also under autocast: the CSR kernels take float32/float64;
            its gradient comes back in its own dtype).
        values: the kept weights ``[nnz]``, in the structure's CSR order.
        bias: ``[out]`` or None.
        structure: the :class:`~lightning_prune_init.sparse.structure.CsrStructure` of ``W`` ``[out, in]``.

    Returns:
        ``[..., out]``, contiguous, equal to ``F.linear(x, W, b)`` up to float summation order.

    >>> s = CsrStructure.from_mask(torch.tensor([[True, True]]))
    >>> sparse_linear(torch.ones(2, 3, 2), torch.tensor([1.0, 2.0]), torch.tensor([0.5]), s).shape
    torch.Size([2, 3, 1])
    """
    out, inp = structure.shape
    if x.shape[-1] != inp:
        raise ValueError(f"input of shape {tuple(x.shape)} does not match a sparse weight of shape {structure.shape}")
    lead = x.shape[:-1]
    x2 = x.to(values.dtype).reshape(-1, inp)
    layout = batch_major(x2.shape[0], structure.density, x2.device)
    return _SparseLinearFunction.apply(x2, values, bias, structure, layout).view(*lead, out)
