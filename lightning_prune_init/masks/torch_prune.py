"""Interop with ``torch.nn.utils.prune``: hand a masked model to tools that expect ``weight_orig`` + ``weight_mask``."""

from __future__ import annotations

from torch import nn

from lightning_prune_init.masks.apply import remove_masks

__all__ = ["to_torch_prune"]


def to_torch_prune(model: nn.Module) -> nn.Module:
    """Convert to ``torch.nn.utils.prune`` format (``<attr>_orig`` Parameter + ``<attr>_mask`` buffer); returns ``model``.

    This package's masks and hooks are removed first (:func:`~lightning_prune_init.masks.apply.remove_masks`), then
    ``torch.nn.utils.prune.custom_from_mask`` is applied to each masked parameter, so the weight is recomputed as
    ``weight_orig * weight_mask`` at every forward from then on.

    >>> import torch
    >>> from lightning_prune_init.masks import apply_masks
    >>> net = apply_masks(nn.Linear(2, 1), {"weight": torch.tensor([[True, False]])})
    >>> to_torch_prune(net).weight_mask.tolist()
    [[1.0, 0.0]]
    """
    from torch.nn.utils import prune

    for name, mask in remove_masks(model).items():
        module_name, _, attr = name.rpartition(".")
        prune.custom_from_mask(model.get_submodule(module_name) if module_name else model, attr, mask)
    return model
