"""Linear operators the spectra act on: a batch of ``B`` independent ``m x n`` matrices known through products.

Two kinds: :class:`MatrixOperator`, a stack of matrices held in memory (a weight's matrices, one per conv group
or query/key/value block), and :class:`JacobianOperator`, the per-example Jacobians of a batched function
``fn: [B, *in] -> [B, *out]`` at a point, known only through products. Both give ``A v`` (:meth:`matvec`), ``Aᵀ u``
(:meth:`rmatvec`) and the dense matrices (:meth:`dense`), for the exact values and the estimators of
:mod:`lightning_prune_init.spectrum.estimators`.

>>> import torch
>>> op = MatrixOperator(torch.eye(3).expand(2, 3, 3))
>>> op.batch, op.m, op.n, op.matvec(torch.ones(2, 3)).tolist()
(2, 3, 3, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

__all__ = ["BatchedOperator", "JacobianOperator", "MatrixOperator"]


class BatchedOperator:
    """A batch of ``batch`` matrices of shape ``[m, n]`` known through products (the interface of both kinds)."""

    batch: int
    m: int
    n: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor:
        """``A_b v_b`` for every matrix: ``[B, n] -> [B, m]``."""
        raise NotImplementedError

    def rmatvec(self, u: Tensor) -> Tensor:
        """``A_bᵀ u_b`` for every matrix: ``[B, m] -> [B, n]``."""
        raise NotImplementedError

    def dense(self, max_chunk_numel: int = 2**22) -> Tensor:
        """All matrices, ``[B, m, n]``; ``max_chunk_numel`` bounds the elements formed per chunk of products."""
        raise NotImplementedError


class MatrixOperator(BatchedOperator):
    """A stack ``[B, m, n]`` (or one ``[m, n]`` matrix, ``B = 1``) of explicit matrices."""

    def __init__(self, matrices: Tensor) -> None:
        self.a = matrices if matrices.dim() == 3 else matrices.unsqueeze(0)
        self.batch, self.m, self.n = self.a.shape
        self.dtype, self.device = matrices.dtype, matrices.device

    def matvec(self, v: Tensor) -> Tensor:
        return torch.bmm(self.a, v.to(self.dtype).unsqueeze(-1)).squeeze(-1)

    def rmatvec(self, u: Tensor) -> Tensor:
        return torch.bmm(self.a.transpose(1, 2), u.to(self.dtype).unsqueeze(-1)).squeeze(-1)

    def dense(self, max_chunk_numel: int = 2**22) -> Tensor:
        return self.a


class JacobianOperator(BatchedOperator):
    """Per-example Jacobians ``∂ fn(P)_b / ∂ P_b`` of a batched function at ``primals`` ``P`` (``[B, *in]``).

    ``fn`` must map ``[B, *in]`` to ``[B, *out]`` with examples that do not interact (true in ``eval()`` mode for
    the usual layers), so the Jacobian of the batch is block diagonal and one product with the batch gives one
    product with every example's Jacobian. ``fn`` is linearized once: one ``torch.func.vjp`` records the graph
    from ``P`` to the output (only what depends on ``P`` is recomputed), its pullback gives ``Jᵀu`` and the
    transpose of the pullback (the vjp of a linear map) gives ``Jv``. A forward-mode jvp would recompute everything
    upstream of ``P`` at every product (measured slower on VGG); it is used only when an operation has no second
    derivative (``hardsigmoid`` in MobileNetV3, fused attention kernels), which the transpose of the pullback needs.
    :meth:`dense` stacks products with basis vectors of the smaller side (``vmap`` over chunks of the basis), so the
    model's forward is never run under ``vmap`` (except by that fallback).

    Raises:
        ValueError: the output is not a tensor whose first dimension is the batch.

    >>> import torch
    >>> w = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    >>> op = JacobianOperator(lambda p: torch.tanh(p) @ w.T, torch.zeros(4, 2))
    >>> op.m, op.n, torch.equal(op.dense()[0], w)
    (3, 2, True)
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], primals: Tensor) -> None:
        self._fn, self._primals = fn, primals
        self._forward_mode = False  # jvp products, once the transpose of the pullback failed
        self.batch = primals.shape[0]
        self.in_shape = primals.shape[1:]
        self.dtype, self.device = primals.dtype, primals.device
        out, self._pullback = vjp(fn, primals)
        if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != self.batch:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the batched output has shape {shape} for {self.batch} examples: the first output dimension must be "
                "the batch"
            )
        self.out_shape = out.shape[1:]
        self._out = out
        self._pushforward: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        self.m, self.n = math.prod(self.out_shape), math.prod(self.in_shape)

    def rmatvec(self, u: Tensor) -> Tensor:
        return self._pullback(u.to(self.dtype).reshape(self.batch, *self.out_shape))[0].reshape(self.batch, -1)

    def matvec(self, v: Tensor) -> Tensor:
        v = v.to(self.dtype).reshape(self.batch, *self.in_shape)
        if not self._forward_mode:
            try:
                if self._pushforward is None:
                    _, self._pushforward = vjp(lambda u: self._pullback(u)[0], torch.zeros_like(self._out))
                return self._pushforward(v)[0].reshape(self.batch, -1)
            except RuntimeError as error:  # an operation without a second derivative
                if "not implemented" not in str(error):
                    raise
                self._forward_mode = True
        return jvp(self._fn, (self._primals,), (v,))[1].reshape(self.batch, -1)

    def dense(self, max_chunk_numel: int = 2**22) -> Tensor:
        rows = self.m <= self.n  # rows from Jᵀ e_i (pullbacks), else columns from J e_j
        k, other = (self.m, self.n) if rows else (self.n, self.m)
        apply = self.rmatvec if rows else self.matvec
        chunk = max(1, max_chunk_numel // max(self.batch * other, 1))
        eye = torch.eye(k, dtype=self.dtype, device=self.device)
        parts = []
        for start in range(0, k, chunk):
            probes = eye[start : start + chunk, None, :].expand(-1, self.batch, -1)  # [c, B, k]
            parts.append(vmap(apply)(probes))  # [c, B, other]
        stacked = torch.cat(parts)  # [k, B, other]
        return stacked.permute(1, 0, 2) if rows else stacked.permute(1, 2, 0)
