"""The data-free approximate isometry repair of pruned weights (SPP's "AI" step), one idea per module.

After pruning, the sparse weights ``C ⊙ W`` are no longer orthogonal. :func:`approximate_isometry` moves the kept
entries so that each weight's Gram over output units approaches ``gain² I``, with the masks fixed and no data:

    minimize  Σ_w sqrt( Σ_g ‖ M_g M_gᵀ − gain² I ‖_F² )      (M_g: the matrices of C_w ⊙ W_w, per group)

* :mod:`.objective`: the error (:func:`orthogonality_error`), its lowest value under a mask
  (:func:`best_possible_error`, through the mask's :func:`structural_rank`);
* :mod:`.solvers`: the authors' plain SGD (``solver="sgd"``: lr 0.1, 10,000 steps) and conjugate gradient with
  exact line search (``solver="cg"``, the default: a lower objective in a small fraction of the time);
* :mod:`.repair`: :func:`approximate_isometry`, on the one parameter selection, each weight in its layout;
* :mod:`.report`: :class:`IsometryReport` / :class:`LayerIsometry`.

Measurements: ``docs/benchmarks_isometry.md``.

>>> import torch
>>> net = torch.nn.Linear(4, 4, bias=False)
>>> report = approximate_isometry(net, progress=False)
>>> report.error_after < 1e-3 < report.error_before
True
"""

from lightning_prune_init.isometry.objective import (
    TARGETS,
    best_possible_error,
    orthogonality_error,
    orthogonality_errors,
    structural_rank,
)
from lightning_prune_init.isometry.repair import approximate_isometry
from lightning_prune_init.isometry.report import IsometryReport, LayerIsometry
from lightning_prune_init.isometry.solvers import SOLVERS

__all__ = [
    "SOLVERS",
    "TARGETS",
    "IsometryReport",
    "LayerIsometry",
    "approximate_isometry",
    "best_possible_error",
    "orthogonality_error",
    "orthogonality_errors",
    "structural_rank",
]
