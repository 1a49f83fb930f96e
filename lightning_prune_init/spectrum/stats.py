"""Singular-value statistics: the one result type of the spectra, and how exact values become statistics.

Statistics pool the singular values of all examples (as the authors' code does) and, for a weight read as
several matrices (conv groups, query/key/value blocks), of all its matrices: ``mean``, ``std``, ``min``,
``max``, ``cond = max / min`` and ``mean_sq`` (mean squared singular value, ``‖J‖_F² / min(m, n)`` averaged over
examples and matrices). All singular values are dimensionless gains.

>>> import torch
>>> stats = stats_from_values(torch.tensor([[2.0, 1.0]]), (2, 2))
>>> stats.mean, stats.cond, stats.mean_sq
(1.5, 2.0, 2.5)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["SpectrumStats", "pool_matrices", "stats_from_values"]


@dataclass(frozen=True)
class SpectrumStats:
    """Singular-value statistics of one Jacobian (or weight), pooled over examples (and matrices).

    Attributes:
        mean, std, min, max: of the singular values (dimensionless gains), pooled over examples and matrices;
            ``nan`` where the method cannot give them (``estimate`` without Lanczos).
        cond: ``max / min`` (``inf`` when ``min == 0``); for ``estimate`` a lower bound.
        mean_sq: mean squared singular value, ``‖J‖_F² / min(m, n)`` averaged over examples and matrices.
        method: ``"exact"`` or ``"estimate"``, the method actually used.
        shape: ``(m, n)`` of one example's Jacobian (output size, input size), or of one matrix of a weight
            (``[out, in]`` orientation, see docs/monitoring.md).
        num_examples: number of examples pooled (1 for the weights scope).
        values: exact only: ``[num_examples, groups · min(m, n)]`` float32 CPU tensor, each row sorted in
            descending order; ``None`` for estimates.
        groups: number of matrices pooled per example: the groups of a grouped conv (its operator is block
            diagonal), 3 for a fused query/key/value projection, else 1.

    >>> SpectrumStats(1.0, 0.0, 1.0, 1.0, 1.0, 1.0, "exact", (2, 2), 1).scalars()["cond"]
    1.0
    """

    mean: float
    std: float
    min: float
    max: float
    cond: float
    mean_sq: float
    method: str
    shape: tuple[int, int]
    num_examples: int
    values: Tensor | None = field(default=None, repr=False, compare=False)
    groups: int = 1

    def scalars(self) -> dict[str, float]:
        """The finite scalar statistics by name (``mean, std, min, max, cond, mean_sq``)."""
        out = {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "cond": self.cond,
            "mean_sq": self.mean_sq,
        }
        return {k: v for k, v in out.items() if math.isfinite(v)}


def stats_from_values(values: Tensor, shape: tuple[int, int]) -> SpectrumStats:
    """Exact statistics from all singular values ``[num_examples, k]`` of Jacobians of shape ``(m, n)``.

    >>> import torch
    >>> stats_from_values(torch.tensor([[3.0, 0.0]]), (2, 3)).scalars()  # cond is infinite: left out
    {'mean': 1.5, 'std': 1.5, 'min': 0.0, 'max': 3.0, 'mean_sq': 4.5}
    """
    flat = values.double().flatten()
    vmin, vmax = float(flat.min()), float(flat.max())
    return SpectrumStats(
        mean=float(flat.mean()),
        std=float(flat.std(unbiased=False)),
        min=vmin,
        max=vmax,
        cond=vmax / vmin if vmin > 0 else math.inf,
        mean_sq=float(flat.pow(2).mean()),
        method="exact",
        shape=shape,
        num_examples=values.shape[0],
        values=values,
    )


def pool_matrices(stats: SpectrumStats, groups: int) -> SpectrumStats:
    """Statistics of ``groups`` matrices computed as a batch, read as one weight: the values of all matrices in
    one row (sorted descending), ``num_examples=1``. Pooled statistics are unchanged (the matrices have one size).

    >>> import torch
    >>> per_group = stats_from_values(torch.tensor([[2.0], [1.0]]), (1, 9))
    >>> pooled = pool_matrices(per_group, 2)
    >>> pooled.values.tolist(), pooled.num_examples, pooled.groups, pooled.mean
    ([[2.0, 1.0]], 1, 2, 1.5)
    """
    values = stats.values
    if values is not None:
        values = values.reshape(1, -1).sort(dim=-1, descending=True).values
    return dataclasses.replace(stats, values=values, num_examples=1, groups=groups)
