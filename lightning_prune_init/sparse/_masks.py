"""The mask functions sparse execution uses, in one place: from the masks package, or ``masking.py`` before it.

Two behaviours are needed of the masks package: ``remove_masks(model, names=[...])`` detaching only some masks
(a switched layer no longer has a dense ``weight`` Parameter to enforce), and ``get_masks`` reporting the masks
of modules that implement ``pruning_masks()`` (:class:`~lightning_prune_init.sparse.linear.SparseLinear` does).
Until the package lands, :func:`detach_masks` detaches all masks and attaches the others again (public
functions only), and :func:`current_masks` adds the sparse layers' masks itself. Both stay correct after.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import Tensor, nn

try:  # the masks package
    from lightning_prune_init.masks import (  # type: ignore[import-not-found]
        apply_masks,
        attach_optimizers,
        detach_optimizers,
        get_masks,
        remove_masks,
    )
except ImportError:  # before the masks package replaces masking.py
    from lightning_prune_init.masking import apply_masks, attach_optimizers, detach_optimizers, get_masks, remove_masks

__all__ = ["apply_masks", "attach_optimizers", "current_masks", "detach_masks", "detach_optimizers", "get_masks"]


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """Masks attached to dense layers, and those held by modules implementing ``pruning_masks()``.

    >>> import torch
    >>> layer = apply_masks(torch.nn.Linear(2, 2), {"weight": torch.eye(2, dtype=torch.bool)})
    >>> list(current_masks(layer))
    ['weight']
    """
    masks = dict(get_masks(model))
    for prefix, module in model.named_modules():
        own = getattr(type(module), "pruning_masks", None)
        if callable(own):
            masks.update({(f"{prefix}." if prefix else "") + attr: m for attr, m in module.pruning_masks().items()})
    return masks


def detach_masks(model: nn.Module, names: Sequence[str]) -> None:
    """Detach the attached masks (and their hooks) of ``names``, leaving every other mask enforced.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> _ = apply_masks(net, {"0.weight": torch.eye(2, dtype=torch.bool), "1.weight": torch.eye(2, dtype=torch.bool)})
    >>> detach_masks(net, ["0.weight"])
    >>> list(get_masks(net))
    ['1.weight']
    """
    if not names:
        return
    if "names" in inspect.signature(remove_masks).parameters:
        remove_masks(model, names=list(names))
        return
    masks = remove_masks(model)  # masking.py: no `names`; detach all, attach the others again
    rest = {n: m for n, m in masks.items() if n not in names}
    if rest:
        apply_masks(model, rest)
