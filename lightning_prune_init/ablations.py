"""Sanity ablations for pruning at initialization (Frankle et al., ICLR 2021; METHOD.md §7).

Each ablation changes one thing and nothing else:

* :func:`shuffle_masks`: permute each mask's entries at random within its tensor. Per-tensor keep counts
  (densities) are unchanged; the positions change.
* :func:`random_masks_like`: random masks with the same per-tensor keep counts ("random pruning at the
  method's layerwise densities"). As a distribution this is the same as shuffling (a uniformly random
  permutation of a mask with ``k`` kept entries keeps a uniformly random ``k``-subset). The difference is what
  the result depends on: :func:`shuffle_masks` permutes the given mask (its output, for a fixed generator
  state, depends on where the kept entries were), :func:`random_masks_like` only reads each tensor's shape and
  count (two masks with the same per-tensor counts give the same random masks for the same seed). Use the
  latter when the baseline must not depend on the method's choice of positions at all.
* :func:`reinitialize_kept_`: draw fresh weights for the kept entries only; the mask, the pruned entries and
  every other parameter and buffer are untouched.
* Inverted scores: ``select_masks(scores, sparsity, invert=True)`` keeps the lowest scores
  (:func:`lightning_prune_init.selection.select_masks`).

Randomness comes only from the ``generator`` argument (a ``torch.Generator`` or an int seed for a new CPU
generator); the global RNG is not used, so equal seeds give equal results on every rank and device. Masks
and parameters are visited in the mapping's order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lightning_prune_init import init as _init

__all__ = ["REINIT_SCHEMES", "random_masks_like", "reinitialize_kept_", "shuffle_masks"]

#: Accepted ``scheme`` values of :func:`reinitialize_kept_`: the package's schemes, and PyTorch's default
#: layer initialization (``kaiming_uniform_(a=sqrt(5))``, as ``nn.Linear``/``nn.Conv2d`` do).
REINIT_SCHEMES: tuple[str, ...] = (*_init.SCHEMES, "pytorch-default")


def _generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"`generator` must be a torch.Generator or an int seed, got {type(generator).__name__}")


def _check_masks(masks: Mapping[str, Tensor]) -> None:
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("`masks` must be a non-empty mapping of parameter name to bool tensor")
    for name, m in masks.items():
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            got = m.dtype if isinstance(m, Tensor) else type(m).__name__
            raise TypeError(f"mask {name!r} must be a torch.bool tensor (True = kept), got {got}")


def shuffle_masks(masks: Mapping[str, Tensor], *, generator: torch.Generator | int) -> dict[str, Tensor]:
    """Each mask with its entries permuted uniformly at random within its own tensor (Frankle et al.'s
    "layerwise shuffle").

    Args:
        masks: ``{name: bool tensor}`` (``True`` = kept).
        generator: a ``torch.Generator`` (one permutation per tensor is drawn from it on its device, in mapping
            order) or an int seed.

    Returns:
        New masks on the input masks' devices: same shapes, same number of kept entries per tensor.
    """
    _check_masks(masks)
    generator = _generator(generator)
    shuffled = {}
    for name, m in masks.items():
        perm = torch.randperm(m.numel(), generator=generator, device=generator.device).to(m.device)
        shuffled[name] = m.reshape(-1)[perm].reshape(m.shape)
    return shuffled


def random_masks_like(masks: Mapping[str, Tensor], *, generator: torch.Generator | int) -> dict[str, Tensor]:
    """Uniformly random masks with each tensor's keep count of ``masks`` (random pruning at the same
    per-layer densities). Reads only shapes and counts (see the module docstring for how this differs from
    :func:`shuffle_masks`).

    Args:
        masks: ``{name: bool tensor}`` (``True`` = kept).
        generator: a ``torch.Generator`` (one permutation per tensor, in mapping order) or an int seed.

    Returns:
        New masks on the input masks' devices, ``int(masks[name].sum())`` entries kept in each.
    """
    _check_masks(masks)
    generator = _generator(generator)
    drawn = {}
    for name, m in masks.items():
        kept = torch.randperm(m.numel(), generator=generator, device=generator.device)[: int(m.sum())]
        flat = torch.zeros(m.numel(), dtype=torch.bool, device=generator.device)
        flat[kept] = True
        drawn[name] = flat.reshape(m.shape).to(m.device)
    return drawn


def _fresh(shape: torch.Size, scheme: str, gain: float, generator: torch.Generator) -> Tensor:
    """A new float32 tensor of ``shape`` on the generator's device drawn with ``scheme`` (1-D: zeros)."""
    fresh = torch.empty(shape, dtype=torch.float32, device=generator.device)
    if fresh.dim() < 2:
        return fresh.zero_()
    if scheme == "orthogonal":
        return _init.orthogonal_(fresh, gain, generator=generator)
    if scheme == "delta-orthogonal":
        return _init.delta_orthogonal_(fresh, gain, generator=generator)
    if scheme == "pytorch-default":
        return torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator).mul_(gain)
    return _init.variance_scaling_(fresh, scheme[3:], gain**2, generator=generator)


@torch.no_grad()
def reinitialize_kept_(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    scheme: str = "orthogonal",
    gain: float = 1.0,
    generator: torch.Generator | int,
) -> nn.Module:
    """Re-initialize the kept entries of each masked parameter in place; returns ``model``.

    For each ``name`` of ``masks`` (in order) a whole new tensor of the parameter's shape is drawn with
    ``scheme`` and its entries at the kept positions are written into the parameter. Pruned entries are not
    written (they stay exactly as they are: 0 in a pruned model), no other parameter or buffer changes, the
    Parameter objects stay the same. Every new tensor is drawn before any is written, so a scheme that
    cannot take a parameter leaves the model untouched.

    Args:
        model: the module; mask keys are ``model.named_parameters()`` names.
        masks: ``{name: bool tensor}`` of each parameter's shape (``True`` = kept).
        scheme: one of :data:`REINIT_SCHEMES`: ``"orthogonal"`` (default; conv: block-orthogonal),
            ``"delta-orthogonal"`` (kept off-centre taps become 0), ``"vs-lecun"``, ``"vs-glorot"``, ``"vs-he"``
            (:mod:`lightning_prune_init.init`), or ``"pytorch-default"``. Use the scheme the model was
            initialized with, so that only the values change, not their distribution. 1-D parameters (biases)
            get zeros at kept entries, as the papers initialize biases.
        gain: scale (> 0), as in :func:`lightning_prune_init.init.init_model_`.
        generator: a ``torch.Generator`` (the draws are made on its device, then copied to the parameter's
            device and dtype) or an int seed.

    Raises:
        ValueError / TypeError: unknown scheme, a key that is not a parameter, a non-bool mask or a shape
            mismatch, a parameter the scheme cannot initialize.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if scheme not in REINIT_SCHEMES:
        raise ValueError(f"`scheme` must be one of {REINIT_SCHEMES}, got {scheme!r}")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"`gain` must be a finite number > 0, got {gain!r}")
    _check_masks(masks)
    generator = _generator(generator)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        if name not in params:
            raise ValueError(f"mask key {name!r} is not a parameter of {type(model).__name__}")
        if m.shape != params[name].shape:
            raise ValueError(f"mask {name!r} has shape {tuple(m.shape)}, its parameter has {tuple(params[name].shape)}")
        if not params[name].is_floating_point():
            raise TypeError(f"parameter {name!r} is not floating point ({params[name].dtype})")
    fresh = {name: _fresh(params[name].shape, scheme, float(gain), generator) for name in masks}
    for name, m in masks.items():
        p = params[name]
        p.copy_(torch.where(m.to(p.device), fresh[name].to(device=p.device, dtype=p.dtype), p))
    return model
