"""The copies kept by weight-averaging callbacks (``WeightAveraging``, ``EMAWeightAveraging``, SWA) carry the
module's masks: they average and swap parameter by parameter, so a pruned entry of the copy must stay 0 too.

Masks are attached to each copy before any layer of it is switched to sparse execution (a switched layer has no
dense ``weight`` Parameter left to attach a mask to), and only those the copy does not report yet.

>>> mask_averaged_copies(trainer, get_masks(pl_module))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch import Trainer
from torch import Tensor

from lightning_prune_init import _compat
from lightning_prune_init.masks import apply_masks, get_masks

__all__ = ["mask_averaged_copies"]


def mask_averaged_copies(trainer: Trainer, masks: Mapping[str, Tensor]) -> None:
    """Attach to every averaged copy of ``trainer``'s callbacks the ``masks`` (``{parameter name: bool mask}``,
    names as in the LightningModule) it does not have yet; a copy's layers in sparse execution keep theirs."""
    for average in _compat.averaged_models(trainer):
        have = get_masks(average)
        missing = {name: mask for name, mask in masks.items() if name not in have}
        if missing:
            apply_masks(average, missing)
