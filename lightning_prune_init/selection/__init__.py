"""From scores to boolean masks (``True`` = kept): where the threshold is picked.

* :mod:`~lightning_prune_init.selection.select`: :func:`select_masks`, keep counts, ``min_density``, ``invert``;
* :mod:`~lightning_prune_init.selection.topk`: the exact ``k``-th largest score (radix selection, no copies);
* :mod:`~lightning_prune_init.selection.patterns`: N:M patterns (``pattern="2:4"``);
* :mod:`~lightning_prune_init.selection.collapse`: layers pruned entirely and dead units.

>>> import torch
>>> select_masks({"w": torch.tensor([0.1, 0.9, 0.5, 0.2])}, 0.5)["w"].tolist()
[False, True, True, False]
"""

from lightning_prune_init.selection.collapse import (
    Collapse,
    CollapsePolicy,
    LayerCollapseError,
    LayerCollapseWarning,
    check_collapse,
    check_masks,
    find_collapse,
)
from lightning_prune_init.selection.patterns import is_n_m, nm_masks, parse_pattern, pattern_sparsity
from lightning_prune_init.selection.select import (
    Scope,
    keep_count,
    min_keep_count,
    select_masks,
    validate_min_density,
    validate_sparsity,
)
from lightning_prune_init.selection.topk import all_finite, kth_largest, sum_float64

__all__ = [
    "Collapse",
    "CollapsePolicy",
    "LayerCollapseError",
    "LayerCollapseWarning",
    "Scope",
    "all_finite",
    "check_collapse",
    "check_masks",
    "find_collapse",
    "is_n_m",
    "keep_count",
    "kth_largest",
    "min_keep_count",
    "nm_masks",
    "parse_pattern",
    "pattern_sparsity",
    "select_masks",
    "sum_float64",
    "validate_min_density",
    "validate_sparsity",
]
