"""Singular values of a batch of operators: exact values, and matrix-free estimates from products.

``exact_values`` forms every matrix (:meth:`~lightning_prune_init.spectrum.operators.BatchedOperator.dense`) and
calls ``torch.linalg.svdvals``. :func:`estimate_stats` never forms them; it works on the Gram matrix of the
smaller side (:class:`Gram`) through products with ``J`` and ``Jᵀ``:

* the largest value by power iteration (:func:`power_iteration`), a Rayleigh quotient, so a lower bound;
* the mean squared value by Hutchinson's estimator (:func:`hutchinson`, ``E‖Jᵀv‖² = ‖J‖_F²`` with Rademacher
  probes; exact when the smaller side has at most ``num_probes`` dimensions);
* with ``lanczos_steps > 0``, the mean, standard deviation and smallest value by stochastic Lanczos quadrature
  (:func:`lanczos`). The largest value is then the larger of the power-iteration and Lanczos estimates (both lower
  bounds). The smallest Ritz value is an *upper* bound of the true smallest value (the condition number a lower
  bound); it is reliable for well separated spectra only and should be read as a trend.

The accuracy of each estimate is measured in docs/monitoring.md and docs/benchmarks_spectrum.md.

>>> import torch
>>> from lightning_prune_init.spectrum.operators import MatrixOperator
>>> op = MatrixOperator(torch.diag(torch.tensor([3.0, 2.0, 1.0])))
>>> exact_values(op).tolist()
[[3.0, 2.0, 1.0]]
>>> stats = estimate_stats(op, power_iters=20, num_probes=3, lanczos_steps=0, lanczos_probes=1,
...                        generator=torch.Generator().manual_seed(0))
>>> round(stats.max, 4), round(stats.mean_sq, 4)  # mean_sq exact: the smaller side has 3 <= num_probes dims
(3.0, 4.6667)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_prune_init.spectrum.operators import BatchedOperator
from lightning_prune_init.spectrum.stats import SpectrumStats

__all__ = [
    "Gram",
    "LanczosResult",
    "estimate_stats",
    "exact_values",
    "hutchinson",
    "lanczos",
    "power_iteration",
    "rademacher",
]


def exact_values(op: BatchedOperator, max_chunk_numel: int = 2**22) -> Tensor:
    """All singular values, ``[B, min(m, n)]`` float32 on CPU, rows sorted in descending order."""
    return torch.linalg.svdvals(op.dense(max_chunk_numel)).float().cpu()


class Gram:
    """``A Aᵀ`` (when ``m <= n``) or ``Aᵀ A``: the Gram matrix of the smaller side, of dimension ``d``.

    >>> from lightning_prune_init.spectrum.operators import MatrixOperator
    >>> gram = Gram(MatrixOperator(torch.ones(2, 5)))
    >>> gram.d, gram(torch.tensor([[1.0, 0.0]], dtype=torch.float64)).tolist()
    (2, [[5.0, 5.0]])
    """

    def __init__(self, op: BatchedOperator) -> None:
        self.op = op
        self.left = op.m <= op.n
        self.d = op.m if self.left else op.n

    def __call__(self, x: Tensor) -> Tensor:
        """``G x`` for every matrix of the batch: ``[B, d]`` float64 in and out."""
        op = self.op
        y = op.matvec(op.rmatvec(x.to(op.dtype))) if self.left else op.rmatvec(op.matvec(x.to(op.dtype)))
        return y.to(torch.float64)

    def one_sided_sq_norm(self, x: Tensor) -> Tensor:
        """``‖Aᵀx‖²`` (or ``‖Ax‖²``) for every matrix: ``[B, d] -> [B]``, the quadratic form ``xᵀ G x``."""
        op = self.op
        y = op.rmatvec(x.to(op.dtype)) if self.left else op.matvec(x.to(op.dtype))
        return y.to(torch.float64).pow(2).sum(-1)


def rademacher(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Independent ±1 entries (float64) drawn from ``generator``, on ``device``.

    >>> set(rademacher((100,), torch.Generator().manual_seed(0), torch.device("cpu")).tolist())
    {1.0, -1.0}
    """
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return bits.to(device=device, dtype=torch.float64) * 2 - 1


def power_iteration(gram: Gram, steps: int, generator: torch.Generator) -> Tensor:
    """Largest eigenvalue of each Gram matrix (``σ_max²``), ``[B]``: the largest Rayleigh quotient of ``steps`` power
    iterations from a Gaussian start (two products each), so a lower bound.

    >>> from lightning_prune_init.spectrum.operators import MatrixOperator
    >>> gram = Gram(MatrixOperator(torch.diag(torch.tensor([2.0, 1.0]))))
    >>> round(float(power_iteration(gram, 30, torch.Generator().manual_seed(0))[0]), 6)
    4.0
    """
    op = gram.op
    v = torch.randn((op.batch, gram.d), generator=generator, device=generator.device, dtype=torch.float64)
    v = v.to(op.device)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    rayleigh = torch.zeros(op.batch, dtype=torch.float64, device=op.device)
    for _ in range(max(steps, 1)):
        w = gram(v)
        rayleigh = torch.maximum(rayleigh, (v * w).sum(-1))
        norm = w.norm(dim=-1, keepdim=True)
        if bool((norm == 0).all()):
            break
        v = torch.where(norm > 0, w / norm.clamp_min(1e-300), v)
    return rayleigh


def hutchinson(gram: Gram, num_probes: int, generator: torch.Generator) -> Tensor:
    """``‖J‖_F²`` of each matrix, ``[B]``: exact (basis vectors) when ``d <= num_probes``, else Hutchinson's
    ``mean_i ‖Jᵀ v_i‖²`` over ``num_probes`` Rademacher vectors (one product each).

    >>> from lightning_prune_init.spectrum.operators import MatrixOperator
    >>> float(hutchinson(Gram(MatrixOperator(torch.ones(2, 3))), 4, torch.Generator()))
    6.0
    """
    op = gram.op
    if gram.d <= num_probes:
        eye = torch.eye(gram.d, dtype=torch.float64, device=op.device)
        return sum(gram.one_sided_sq_norm(eye[i].expand(op.batch, -1)) for i in range(gram.d))
    total = torch.zeros(op.batch, dtype=torch.float64, device=op.device)
    for _ in range(num_probes):
        total += gram.one_sided_sq_norm(rademacher((op.batch, gram.d), generator, op.device))
    return total / num_probes


@dataclass
class LanczosResult:
    """Ritz values and quadrature weights of one Lanczos run per matrix (see :func:`lanczos`)."""

    ritz: Tensor  # [B, k] Ritz values (eigenvalue estimates of the Gram matrix)
    weights: Tensor  # [B, k] quadrature weights, summing to 1 per row


def lanczos(gram: Gram, steps: int, generator: torch.Generator) -> LanczosResult:
    """Lanczos with full reorthogonalization from a Rademacher start (stochastic Lanczos quadrature).

    With ``q₁ = v/‖v‖``, ``Σ_j weights_j f(ritz_j)`` estimates ``tr f(G) / d``. On breakdown
    (an invariant subspace found) the iteration restarts from a random vector orthogonal to the basis,
    which keeps the quadrature of ``q₁`` exact and the Ritz values within the spectrum. ``steps`` products with the
    Gram matrix (two with the operator each).

    >>> from lightning_prune_init.spectrum.operators import MatrixOperator
    >>> res = lanczos(Gram(MatrixOperator(torch.diag(torch.tensor([3.0, 2.0, 1.0])))), 3, torch.Generator())
    >>> [round(v, 6) for v in res.ritz[0].tolist()]  # the whole space: the eigenvalues of the Gram matrix
    [1.0, 4.0, 9.0]
    """
    op = gram.op
    b, d = op.batch, gram.d
    k = min(steps, d)
    q = rademacher((b, d), generator, op.device)
    q = q / q.norm(dim=-1, keepdim=True)
    basis = torch.zeros((k, b, d), dtype=torch.float64, device=op.device)
    alpha = torch.zeros((b, k), dtype=torch.float64, device=op.device)
    beta = torch.zeros((b, k), dtype=torch.float64, device=op.device)
    scale: Tensor | None = None
    tolerance = 10 * torch.finfo(op.dtype).eps  # relative size of a residual that is rounding noise
    for j in range(k):
        basis[j] = q
        w = gram(q)
        alpha[:, j] = (q * w).sum(-1)
        if scale is None:
            scale = alpha[:, 0].abs().clamp_min(1e-300)
        for _ in range(2):  # full reorthogonalization, twice
            coeffs = torch.einsum("jbd,bd->jb", basis[: j + 1], w)
            w = w - torch.einsum("jb,jbd->bd", coeffs, basis[: j + 1])
        if j == k - 1:
            break
        norm = w.norm(dim=-1)
        broken = norm <= tolerance * scale + 1e-300
        if bool(broken.any()):
            fresh = torch.randn((b, d), generator=generator, device=generator.device, dtype=torch.float64).to(op.device)
            for _ in range(2):
                coeffs = torch.einsum("jbd,bd->jb", basis[: j + 1], fresh)
                fresh = fresh - torch.einsum("jb,jbd->bd", coeffs, basis[: j + 1])
            fresh = fresh / fresh.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            norm = torch.where(broken, torch.zeros_like(norm), norm)
            q = torch.where(broken[:, None], fresh, w / norm.clamp_min(1e-300)[:, None])
        else:
            q = w / norm[:, None]
        beta[:, j] = norm
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, : k - 1], 1) + torch.diag_embed(beta[:, : k - 1], -1)
    ritz, vecs = torch.linalg.eigh(tri)
    return LanczosResult(ritz=ritz.clamp_min(0), weights=vecs[:, 0, :].pow(2))



def estimate_stats(
    op: BatchedOperator,
    *,
    power_iters: int,
    num_probes: int,
    lanczos_steps: int,
    lanczos_probes: int,
    generator: torch.Generator,
) -> SpectrumStats:
    """Estimated statistics of a batch of operators (module docstring), pooled over the batch.

    Args:
        op: the operators.
        power_iters: power-iteration steps (two products each).
        num_probes: Hutchinson probes (one product each).
        lanczos_steps: Lanczos steps per probe (two products each); 0 turns Lanczos off (then ``mean``, ``std``,
            ``min`` and ``cond`` are ``nan``). When it reaches the smaller dimension the Ritz values are the spectrum.
        lanczos_probes: Lanczos start vectors per matrix.
        generator: source of every random vector.

    Returns:
        :class:`~lightning_prune_init.spectrum.stats.SpectrumStats` with ``method="estimate"`` and no values.
    """
    gram = Gram(op)
    k = min(op.m, op.n)
    lam_max = power_iteration(gram, power_iters, generator)
    mean_sq = float((hutchinson(gram, num_probes, generator) / k).mean())
    mean = std = vmin = math.nan
    if lanczos_steps > 0:
        means, second, mins = [], [], []
        full = lanczos_steps >= gram.d  # the Krylov basis spans everything: Ritz values are the spectrum
        for _ in range(1 if full else lanczos_probes):
            res = lanczos(gram, lanczos_steps, generator)
            if full:
                res.weights = torch.full_like(res.weights, 1.0 / gram.d)
                mean_sq = float((res.ritz.sum(-1) / k).mean())
            means.append((res.weights * res.ritz.sqrt()).sum(-1))
            second.append((res.weights * res.ritz).sum(-1))
            mins.append(res.ritz[:, 0])
            lam_max = torch.maximum(lam_max, res.ritz[:, -1])
        mean = float(torch.stack(means).mean())
        std = math.sqrt(max(float(torch.stack(second).mean()) - mean**2, 0.0))
        vmin = math.sqrt(max(float(torch.stack(mins).min()), 0.0))
    vmax = math.sqrt(max(float(lam_max.max()), 0.0))
    cond = (vmax / vmin if vmin > 0 else math.inf) if math.isfinite(vmin) else math.nan
    return SpectrumStats(mean, std, vmin, vmax, cond, mean_sq, "estimate", (op.m, op.n), op.batch)

