"""Pruning masks: attach and enforce them, keep them in checkpoints, report them.

* ``hooks.py``: how pruned entries are kept at exactly 0 (gradient, forward and state-dict hooks, ``.data``
  writes, the ``pruning_masks()`` protocol); :func:`get_masks`, :func:`enforce_masks_`, :func:`mark_masks_stale`.
* ``apply.py``: :func:`apply_masks` (all or nothing; frozen and tied parameters), :func:`remove_masks`,
  :func:`masked_nonzeros`.
* ``optimizers.py``: optimizer state and steps (:func:`zero_optimizer_state_`, trusted elementwise steps).
* ``checkpoint.py``: the verified bit-packed format (:func:`pack_masks`, :func:`unpack_masks`, :class:`MaskStateError`).
* ``report.py``: :func:`sparsity_report`. ``torch_prune.py``: :func:`to_torch_prune`.

>>> import torch
>>> net = apply_masks(torch.nn.Linear(4, 2), {"weight": torch.rand(2, 4) > 0.5})
>>> masked_nonzeros(net, get_masks(net))
{'weight': 0}
"""

from lightning_prune_init.masks.apply import apply_masks, masked_nonzeros, remove_masks
from lightning_prune_init.masks.checkpoint import MaskStateError, pack_masks, unpack_masks
from lightning_prune_init.masks.hooks import enforce_masks_, get_masks, mark_masks_stale
from lightning_prune_init.masks.optimizers import attach_optimizers, detach_optimizers, zero_optimizer_state_
from lightning_prune_init.masks.report import LayerDensity, SparsityReport, sparsity_report
from lightning_prune_init.masks.torch_prune import to_torch_prune

__all__ = [
    "LayerDensity",
    "MaskStateError",
    "SparsityReport",
    "apply_masks",
    "attach_optimizers",
    "detach_optimizers",
    "enforce_masks_",
    "get_masks",
    "mark_masks_stale",
    "masked_nonzeros",
    "pack_masks",
    "remove_masks",
    "sparsity_report",
    "to_torch_prune",
    "unpack_masks",
    "zero_optimizer_state_",
]
