"""How the repair minimizes the error: the authors' plain SGD and a conjugate-gradient solver, on stacked matrices.

Matrices of the same size (one per group of each weight, ``docs/benchmarks_isometry.md``) are stacked as wide
matrices ``A [B, k, L]`` (``k <= L``; a tall matrix is transposed, which keeps the error: see
:func:`~lightning_prune_init.isometry.objective.squared_errors`), and every step updates the whole stack with
batched matrix products. With ``E_b = A_b A_bᵀ − gain² I`` and ``C`` the mask:

* :func:`sgd_step` (the authors'): plain SGD on the *unsquared* error of each weight,
  ``W ← W − lr · ∇ sqrt(Σ_g ‖E_g‖² + const)``, i.e. ``A_b ← A_b − lr · 2 (E_b A_b ⊙ C_b) / error(weight of b)``;
  the denominator is the error of the whole weight, so a grouped weight takes the step of its dense equivalent.
* :class:`ConjugateGradient`: Polak–Ribière+ nonlinear CG on ``‖E_b‖²`` per matrix, with exact line search
  (the error along a direction is a quartic in the step). The weights' terms are independent sums of
  matrix terms, so it has the same minimizers and needs no learning rate.

Pruned entries are 0 in ``A`` and every update is masked, so they stay exactly 0.

>>> batch = MatrixBatch.stack([torch.tensor([[2.0, 0.0], [0.0, 1.0]])], [torch.ones(2, 2)], [0.0], [0.0], [0], 1.0)
>>> batch.layer_errors(batch.squared_errors(1.0)[1]).tolist()
[3.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SOLVERS", "ConjugateGradient", "MatrixBatch", "dot", "line_minimum", "sgd_step"]

#: Accepted values of ``approximate_isometry(solver=...)``: ``"cg"`` (default) and ``"sgd"`` (the authors').
SOLVERS: tuple[str, ...] = ("cg", "sgd")


@dataclass
class MatrixBatch:
    """Matrices of one size stacked as ``A [B, k, L]`` (``k <= L``), with the weights they belong to.

    Attributes:
        a: the kept entries of ``C ⊙ W`` (pruned entries 0), updated in place by the solvers.
        c: the mask as 0/1 in ``a``'s dtype.
        constant: ``[B]``, ``gain⁴ (rows − cols)`` for a tall matrix under ``"identity"``, else 0.
        best: ``[B]``, the lowest error of each matrix.
        layer_of: ``[B]``, index of the weight each matrix belongs to (a weight's matrices are contiguous).
        layer_best: ``[W]``, the lowest error of each weight.
        steps: ``[B]``, solver steps each matrix took.

    >>> MatrixBatch.stack([torch.ones(1, 2), torch.ones(2, 3)], [torch.ones(1, 2), torch.ones(2, 3)], [0.0, 0.0],
    ...                   [0.0, 0.0], [0, 0], 1.0).a.shape  # padded to the largest matrix
    torch.Size([2, 2, 3])
    """

    a: Tensor
    c: Tensor
    constant: Tensor
    best: Tensor
    layer_of: Tensor
    layer_best: Tensor
    steps: Tensor

    @classmethod
    def stack(
        cls,
        matrices: Sequence[Tensor],
        masks: Sequence[Tensor],
        constants: Sequence[float],
        bests: Sequence[float],
        layer_of: Sequence[int],
        gain2: float,
    ) -> MatrixBatch:
        """One batch from wide matrices ``[k_b, L_b]`` (masked), their 0/1 masks, one constant, one lowest error
        and the index of its weight each. Matrices are padded with zeros to the largest ``k`` and ``L``: a zero
        row adds exactly ``gain⁴`` to its squared error and nothing to any gradient, so ``constant`` is lowered by
        that much per padding row."""
        k = max(m.shape[0] for m in matrices)
        wide = max(m.shape[1] for m in matrices)
        a = matrices[0].new_zeros((len(matrices), k, wide))
        c = torch.zeros_like(a)
        for i, (m, mask) in enumerate(zip(matrices, masks)):
            a[i, : m.shape[0], : m.shape[1]] = m
            c[i, : m.shape[0], : m.shape[1]] = mask
        padding = torch.tensor([k - m.shape[0] for m in matrices], device=a.device, dtype=a.dtype)
        index = torch.tensor(list(layer_of), device=a.device, dtype=torch.long)
        best = torch.tensor(list(bests), device=a.device, dtype=a.dtype)
        count = int(index.max()) + 1
        layer_best = torch.zeros(count, device=a.device, dtype=a.dtype).index_add_(0, index, best**2).sqrt()
        return cls(
            a=a,
            c=c,
            constant=torch.tensor(list(constants), device=a.device, dtype=a.dtype) - gain2**2 * padding,
            best=best,
            layer_of=index,
            layer_best=layer_best,
            steps=torch.zeros(len(a), device=a.device, dtype=torch.long),
        )

    def squared_errors(self, gain2: float) -> tuple[Tensor, Tensor]:
        """``(E, s)``: ``E = A Aᵀ − gain² I`` ``[B, k, k]`` and ``s = ‖E‖² + constant`` per matrix ``[B]``."""
        e = torch.bmm(self.a, self.a.mT)
        e.diagonal(dim1=-2, dim2=-1).sub_(gain2)
        return e, dot(e, e) + self.constant

    def layer_errors(self, squared: Tensor) -> Tensor:
        """The error of each weight, ``sqrt(Σ_{its matrices} s)`` ``[W]``, from the per-matrix ``s`` ``[B]``."""
        if len(self.layer_best) == len(squared):  # one matrix per weight
            return squared.clamp_min(0).sqrt()
        total = torch.zeros_like(self.layer_best).index_add_(0, self.layer_of, squared)
        return total.clamp_min(0).sqrt()

    def flush_(self) -> None:
        """Set the entries of ``A`` below ``sqrt(tiny / eps)`` of its dtype (3e-16 in float32) to exactly 0, in place.

        Entries that decay toward 0 would otherwise pass through the subnormal range, where every CPU matrix
        product slows down several times; their products with entries of size <= 1 are below the dtype's
        resolution, so the error and its gradient do not change measurably. (The authors' SGD does not flush:
        it keeps the arithmetic of the first implementation to the bit; ``torch.set_flush_denormal(True)`` around
        it gives the speed at the cost of the last bits.)
        """
        info = torch.finfo(self.a.dtype)
        self.a.copy_(torch.nn.functional.hardshrink(self.a, math.sqrt(info.tiny / info.eps)))

    def stop_met(self, layer_error: Tensor, tol: float | None, active: Tensor) -> None:
        """Freeze (in place) the matrices of ``active`` whose weight is within ``tol`` of its lowest error."""
        if tol is not None:
            active &= (layer_error - self.layer_best > tol)[self.layer_of]


def dot(x: Tensor, y: Tensor) -> Tensor:
    """``Σ x ⊙ y`` per batch entry of two contiguous ``[B, ...]`` tensors (one batched product, no temporary).

    >>> dot(torch.ones(2, 3, 3), torch.full((2, 3, 3), 2.0)).tolist()
    [18.0, 18.0]
    """
    n = len(x)
    return torch.bmm(x.reshape(n, 1, -1), y.reshape(n, -1, 1)).reshape(n)


def sgd_step(batch: MatrixBatch, lr: float, gain2: float, tol: float | None, active: Tensor) -> Tensor:
    """One plain SGD step on the unsquared error of each weight; returns the weights' errors before it ``[W]``.

    ``∂ sqrt(Σ_g ‖E_g‖² + const) / ∂A_b = 2 E_b A_b / error`` (``E`` symmetric), masked; 0 where the error is 0.
    The operations and their order are those of the first implementation (the reproduction tables depend on the
    last bits: near its minimum the unsquared SGD oscillates and amplifies rounding differences).

    >>> batch = MatrixBatch.stack([torch.tensor([[2.0]])], [torch.ones(1, 1)], [0.0], [0.0], [0], 1.0)
    >>> err = sgd_step(batch, 0.1, 1.0, None, torch.ones(1, dtype=torch.bool))  # E = 2·2 − 1 = 3, error 3
    >>> err.tolist(), round(float(batch.a), 4)  # 2 − 0.1 · 2 · (3 · 2) / 3
    ([3.0], 1.6)
    """
    e = torch.bmm(batch.a, batch.a.mT)
    e.diagonal(dim1=-2, dim2=-1).sub_(gain2)
    err = batch.layer_errors(e.pow(2).sum((-2, -1)) + batch.constant)
    batch.stop_met(err, tol, active)
    per_matrix = err[batch.layer_of]
    scale = torch.where(per_matrix > 0, -2.0 * lr / per_matrix.clamp_min(torch.finfo(err.dtype).tiny), 0.0)
    if tol is not None:
        scale = scale * active
    update = torch.bmm(e, batch.a)
    update.mul_(batch.c).mul_(scale[:, None, None])
    batch.a.add_(update)
    return err


def line_minimum(s0: Tensor, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor) -> tuple[Tensor, Tensor]:
    """Minimize ``p(t) = s0 + c0 t + c1 t²/2 + c2 t³/3 + c3 t⁴/4`` over ``t >= 0`` per row; returns ``(t, p(t))``.

    ``p' = c3 t³ + c2 t² + c1 t + c0`` (``c3 > 0``): the minimizer is 0 or a real root of ``p'``, so evaluating
    ``p`` at 0 and at every root's real part (clamped to >= 0, roots from the companion matrix) finds it. Rows with
    ``c3 <= 0`` (a zero direction) get ``t = 0``.

    >>> one = torch.ones(1, dtype=torch.float64)
    >>> t, p = line_minimum(one, -2 * one, 0 * one, 0 * one, 4 * one)  # 1 − 2t + t⁴: minimum at t = 2^(-1/3)
    >>> round(float(t), 6), round(float(p), 6)
    (0.793701, -0.190551)
    """
    safe = c3 > 0
    c3s = torch.where(safe, c3, 1.0)
    companion = torch.zeros(c3.shape + (3, 3), dtype=c3.dtype, device=c3.device)
    companion[..., 0, 0] = -c2 / c3s
    companion[..., 0, 1] = -c1 / c3s
    companion[..., 0, 2] = -c0 / c3s
    companion[..., 1, 0] = 1.0
    companion[..., 2, 1] = 1.0
    roots = torch.linalg.eigvals(companion).real.clamp_min(0.0)
    t = torch.cat([torch.zeros_like(c3)[:, None], roots], dim=1)  # [B, 4]
    values = s0[:, None] + t * (c0[:, None] + t * (c1[:, None] / 2 + t * (c2[:, None] / 3 + t * c3[:, None] / 4)))
    best = values.argmin(dim=1, keepdim=True)
    t_best = torch.where(safe, t.gather(1, best).squeeze(1), 0.0)
    p_best = torch.where(safe, values.gather(1, best).squeeze(1), s0)
    return t_best, p_best


class ConjugateGradient:
    """Polak–Ribière+ nonlinear CG on ``‖A Aᵀ − gain² I‖²`` per matrix, with exact line search.

    Along a direction ``D`` the Gram is ``A Aᵀ + t (A Dᵀ + D Aᵀ) + t² D Dᵀ``, so the squared error is a quartic
    in ``t`` (:func:`line_minimum`), and the next Gram follows from the products the line search already took
    (recomputed from ``A`` every :attr:`refresh` steps and after a restart, against rounding drift; entries of
    ``A`` near the subnormal range are flushed then, :meth:`MatrixBatch.flush_`).

    A matrix stops when (a) its weight is within ``tol`` of its lowest error, or, with ``tol=None``, when
    its own error is within :attr:`close` ``· gain²`` (1e-4) of its lowest, or float32 rounding hides further
    progress (``error² − best²`` below ``(20 · eps_float32 · gain² · k)²`` or ``64 · eps_float32 · error²``);
    (b) a steepest-descent step no longer improves it, or the last :attr:`window` steps took less than
    ``1 − ``:attr:`slow` (10%) off ``error² − best²`` (a crawl: sparse masks can make the last digits cost
    thousands of steps); (c) at ``steps``.

    A sparse matrix sometimes stops at a spurious stationary point with a Gram eigenvalue stuck at 0 (a row
    starved of columns that other rows hold; escaping needs a coordinated move of many rows). The authors'
    SGD meets the same points. When a matrix stops that far (squared error more than ``gain⁴/2`` above its
    lowest), it starts again from its initial entries plus small seeded noise on the kept entries (10% of the
    entry size of a ``gain``-orthogonal matrix of its density), at most :attr:`max_restarts` times, keeping its
    best iterate (:meth:`finish`). The global RNG is not used.

    >>> batch = MatrixBatch.stack([torch.tensor([[2.0, 0.0], [0.0, 0.5]])], [torch.ones(2, 2)], [0.0], [0.0], [0], 1.0)
    >>> cg, active = ConjugateGradient(batch, 1.0, None), torch.ones(1, dtype=torch.bool)
    >>> for _ in range(20):
    ...     _ = cg.step(None, active)
    >>> torch.allclose(batch.a[0] @ batch.a[0].T, torch.eye(2), atol=1e-4)
    True
    """

    max_restarts = 4
    refresh = 10
    close = 1e-4
    window = 25
    slow = 0.9

    def __init__(self, batch: MatrixBatch, gain2: float, tol: float | None) -> None:
        self.batch = batch
        self.gain2 = gain2
        a = batch.a
        size, k, _ = a.shape
        self.start = a.clone()
        self.direction = torch.zeros_like(a)
        self.previous: Tensor | None = None
        self.restart = torch.ones(size, dtype=torch.bool, device=a.device)  # next direction: -grad
        self.converged = torch.zeros(size, dtype=torch.bool, device=a.device)
        self.restarts = torch.zeros(size, dtype=torch.long, device=a.device)
        self.best_error = torch.full((size,), math.inf, dtype=a.dtype, device=a.device)
        self.best_a: Tensor | None = None
        self.stall = 16 * torch.finfo(a.dtype).eps
        eps32 = torch.finfo(torch.float32).eps  # stop at single precision, whatever the dtype
        self.floor2 = (20 * eps32 * gain2 * k) ** 2 if tol is None else 0.0
        self.relative = 64 * eps32 if tol is None else 0.0
        margin = self.close * gain2 if tol is None else 0.0
        self.near2 = margin * (2 * batch.best + margin)  # error <= best + margin  <=>  error² − best² <= near2
        self.checked = torch.full((size,), math.inf, dtype=torch.float64, device=a.device)  # error² − best² then
        self.count = 0
        self.noise = 0.1 * math.sqrt(gain2) * torch.sqrt(k / batch.c.sum((-2, -1)).clamp_min(1.0))
        self.generator: torch.Generator | None = None
        self.e: Tensor | None = None  # E = A Aᵀ − gain² I of the current A
        self.age = 0
        self.spare: Tensor | None = None  # the gradient buffer not in use
        self.previous_norm = torch.zeros(size, dtype=a.dtype, device=a.device)

    def _gram_error(self) -> tuple[Tensor, Tensor]:
        if self.e is None or self.age >= self.refresh:
            self.batch.flush_()
            self.e, _ = self.batch.squared_errors(self.gain2)
            self.age = 0
        return self.e, dot(self.e, self.e) + self.batch.constant

    def _start_again(self, which: Tensor, err: Tensor) -> None:
        """Remember the current iterate of the matrices ``which`` if it is their best, then restart them."""
        a, c = self.batch.a, self.batch.c
        if self.best_a is None:
            self.best_a = torch.zeros_like(a)
        better = which & (err < self.best_error)
        self.best_a[better] = a[better]
        self.best_error = torch.where(better, err, self.best_error)
        if self.generator is None:
            self.generator = torch.Generator(device=a.device)
            self.generator.manual_seed(0)
        noise = torch.randn(a.shape, generator=self.generator, device=a.device, dtype=a.dtype)
        noise.mul_(c).mul_(self.noise[:, None, None]).add_(self.start)
        a[which] = noise[which]
        self.restarts += which
        self.restart |= which
        self.checked[which] = math.inf
        self.e = None

    def finish(self) -> None:
        """Put back the best iterate of the matrices whose last restart ended worse than an earlier attempt."""
        if self.best_a is None:
            return
        _, squared = self.batch.squared_errors(self.gain2)
        worse = self.best_error < squared.sqrt()
        self.batch.a[worse] = self.best_a[worse]

    def step(self, tol: float | None, active: Tensor) -> Tensor:
        """One CG step of the ``active`` matrices (``active`` is updated in place); returns the weights' errors
        before the step ``[W]``."""
        b, a = self.batch, self.batch.a
        e, squared = self._gram_error()
        err_layer = b.layer_errors(squared)
        b.stop_met(err_layer, tol, active)
        err = squared.clamp_min(0).sqrt()
        reducible2 = (squared - b.best.pow(2)).clamp_min(0)
        self.converged |= reducible2 <= torch.clamp_min(self.relative * squared, self.floor2).maximum(self.near2)
        # ‖E‖²'s gradient is 4 (E A) ⊙ C; the factor 4 is left out (the line search sets the step length)
        grad = torch.bmm(e, a, out=self.spare).mul_(b.c)
        self.spare = self.previous
        d = self.direction
        gg = dot(grad, grad)
        if self.previous is None:
            torch.neg(grad, out=d)
            steepest = torch.ones_like(self.restart)
        else:
            beta = (gg - dot(grad, self.previous)) / self.previous_norm.clamp_min(torch.finfo(a.dtype).tiny)
            beta = torch.where(self.restart, 0.0, beta.clamp_min(0.0))
            d.mul_(beta[:, None, None]).sub_(grad)
            uphill = dot(d, grad) >= 0
            if bool(uphill.any()):
                d[uphill] = -grad[uphill]
                beta = torch.where(uphill, 0.0, beta)
            steepest = beta == 0
        self.previous, self.previous_norm = grad, gg
        x = torch.bmm(a, d.mT)
        s = x.add_(x.mT.clone())
        q = torch.bmm(d, d.mT)
        f64 = torch.float64
        s0 = (squared - b.constant).to(f64)
        c0 = 2 * dot(e, s).to(f64)
        c1 = 2 * (dot(s, s) + 2 * dot(e, q)).to(f64)
        c2 = 6 * dot(s, q).to(f64)
        c3 = 4 * dot(q, q).to(f64)
        t, p = line_minimum(s0, c0, c1, c2, c3)
        # no measurable progress on the reducible part of ‖E‖² (the part above its lowest possible value)
        reducible = (s0 - (b.best.to(f64) ** 2 - b.constant.to(f64))).clamp_min(0)
        stalled = (s0 - p) <= self.stall * torch.maximum(reducible, self.stall * s0)
        stuck = stalled & steepest
        self.count += 1
        if self.count % self.window == 0:  # a crawl counts as stuck
            stuck |= reducible2.to(f64) > self.slow * self.checked
            self.checked = reducible2.to(f64)
        stuck &= ~self.converged
        far = reducible2.to(f64) > 0.5 * self.gain2**2
        again = stuck & far & (self.restarts < self.max_restarts) & active
        self.converged |= stuck & ~again
        active &= ~self.converged
        t = torch.where(stalled | ~active, 0.0, t).to(a.dtype)
        self.restart = stalled
        tt = t[:, None, None]
        a.addcmul_(d, tt)  # d is masked, so pruned entries stay 0
        e.addcmul_(s, tt).addcmul_(q, tt * tt)  # the Gram of the new A, from the products above
        self.age += 1
        if bool(again.any()):
            self._start_again(again, err)
        return err_layer
