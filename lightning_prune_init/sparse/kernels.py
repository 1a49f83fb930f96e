"""One sparse linear map, forward and backward, touching only the ``nnz`` kept weights.

For ``y = x Wᵀ + b`` with ``W`` ``[out, in]`` held as its kept values in CSR order
(:class:`~lightning_prune_init.sparse.structure.CsrStructure`) and ``x`` flattened to ``[N, in]``:

* forward: ``yᵀ = W xᵀ`` (``torch.sparse.mm``, CSR × dense), then ``+ b``;
* input gradient: ``dxᵀ = Wᵀ dyᵀ`` with ``Wᵀ``'s CSR structure built once (only ``values[perm]`` per step);
* weight gradient at the kept entries only: ``dW[i, j] = Σ_n dy[n, i] x[n, j]`` for kept ``(i, j)``
  (``torch.sparse.sampled_addmm``): an ``nnz``-sized gradient for the ``nnz``-sized parameter;
* bias gradient: ``Σ_n dy[n]``.

The kernels want the dense operand with the batch as its last, contiguous axis (``xᵀ`` ``[in, N]``): one copy of
the activations per call, kept for the weight gradient (whose kernel reads it twice as fast as ``x``; it costs
one activation-sized buffer per layer until the backward). Outputs and input gradients are contiguous: a
transposed view would save a copy, but elementwise ops mixing it with contiguous tensors (the ReLU backward)
run several times slower on such mixed strides, and ``.view`` in user code needs contiguous outputs.

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

__all__ = ["sparse_linear"]


class _SparseLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` with ``W`` in CSR form; gradients for ``x``, the kept values and ``b``."""

    @staticmethod
    def forward(ctx: Any, x2: Tensor, values: Tensor, bias: Tensor | None, structure: CsrStructure) -> Tensor:
        with torch.autocast(x2.device.type, enabled=False):  # the CSR kernels take the values' dtype only
            return _SparseLinearFunction._forward(ctx, x2, values, bias, structure)

    @staticmethod
    def _forward(ctx: Any, x2: Tensor, values: Tensor, bias: Tensor | None, structure: CsrStructure) -> Tensor:
        xt = x2.t().contiguous()  # [in, N]: the batch contiguous, for the forward and the weight gradient
        yt = torch.sparse.mm(structure.csr(values), xt)  # [out, N]
        y = torch.empty(yt.shape[1], yt.shape[0], dtype=yt.dtype, device=yt.device)
        if bias is None:
            y.copy_(yt.t())
        else:
            torch.add(yt.t(), bias, out=y)  # transpose and bias in one pass
        ctx.save_for_backward(xt, values)
        ctx.structure = structure
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        with torch.autocast(gy.device.type, enabled=False):
            return _SparseLinearFunction._backward(ctx, gy.to(ctx.saved_tensors[1].dtype))

    @staticmethod
    def _backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        xt, values = ctx.saved_tensors
        structure: CsrStructure = ctx.structure
        gyt = gy.t().contiguous()  # [out, N]
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.sparse.mm(structure.csr_t(values), gyt).t().contiguous()  # [N, in]
        if ctx.needs_input_grad[1]:
            # dW[i, j] = <dyᵀ[i], xᵀ[j]>, both rows contiguous (the kernel reads mat2 transposed)
            gv = torch.sparse.sampled_addmm(structure.csr(values), gyt, xt.t(), beta=0.0).values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gyt.sum(dim=1)
        return gx, gv, gb, None


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
    return _SparseLinearFunction.apply(x2, values, bias, structure).view(*lead, out)
