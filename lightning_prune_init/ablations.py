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

from lightning_prune_init._validation import check_bool_masks, check_choice, check_number
from lightning_prune_init.init import SCHEMES, init_tensor_
from lightning_prune_init.init.model import is_bias
from lightning_prune_init.parameters import SelectedParameter, select_parameters

__all__ = ["REINIT_SCHEMES", "random_masks_like", "reinitialize_kept_", "shuffle_masks"]

#: Accepted ``scheme`` values of :func:`reinitialize_kept_`: the package's schemes, and PyTorch's default
#: layer initialization (``kaiming_uniform_(a=sqrt(5))``, as ``nn.Linear``/``nn.Conv2d`` do).
REINIT_SCHEMES: tuple[str, ...] = (*SCHEMES, "pytorch-default")


def _generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"`generator` must be a torch.Generator or an int seed, got {type(generator).__name__}")


def _check_masks(masks: Mapping[str, Tensor]) -> None:
    """Masks that need no model: a non-empty mapping of bool tensors (any shapes)."""
    shapes = {n: getattr(m, "shape", ()) for n, m in masks.items()} if isinstance(masks, Mapping) else {}
    check_bool_masks(masks, shapes)


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


def _fresh(p: Tensor, entry: SelectedParameter, scheme: str, gain: float, generator: torch.Generator) -> Tensor:
    """A new float32 tensor like ``p`` on the generator's device, drawn with ``scheme`` per matrix of the entry's
    layout; a 1-D bias gets zeros, any other 1-D tensor its current values (no scheme defines it)."""
    layout = entry.layout
    if not layout.is_matrix:
        if is_bias(entry.names):
            return torch.zeros(p.shape, dtype=torch.float32, device=generator.device)
        return p.detach().to(device=generator.device, dtype=torch.float32, copy=True)
    if scheme == "pytorch-default":  # nn.Linear / nn.Conv's own reset, on the [out, in, *kernel] orientation
        shape = p.shape[::-1] if layout.kind == "transposed" else p.shape
        fresh = torch.empty(shape, dtype=torch.float32, device=generator.device)
        fresh = torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator).mul_(gain)
        return fresh.T if layout.kind == "transposed" else fresh
    fresh = torch.empty(p.shape, dtype=torch.float32, device=generator.device)
    return init_tensor_(fresh, scheme, gain, layout=layout, generator=generator)


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
        scheme: one of :data:`REINIT_SCHEMES`: ``"orthogonal"`` (default; conv: block-orthogonal per group),
            ``"delta-orthogonal"`` (kept off-centre taps become 0), ``"vs-lecun"``, ``"vs-glorot"``, ``"vs-he"``
            (:func:`lightning_prune_init.init.init_tensor_`, per matrix of each tensor's layout as
            :func:`~lightning_prune_init.init.init_model_` draws it: grouped convs per group, transformers
            ``Conv1D`` as ``[out, in]``, attention q/k/v blocks), or ``"pytorch-default"``. Use the scheme the
            model was initialized with, so that only the values change, not their distribution. 1-D biases get
            zeros at kept entries, as the papers initialize biases; other 1-D tensors keep their values.
        gain: scale (> 0), as in :func:`lightning_prune_init.init.init_model_`.
        generator: a ``torch.Generator`` (the draws are made on its device, then copied to the parameter's
            device and dtype) or an int seed.

    Raises:
        ValueError / TypeError: unknown scheme, a key that is not a parameter, a non-bool mask or a shape
            mismatch, a parameter that is not floating point.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=4, bias=False))
    >>> keep = {"0.weight": torch.ones(4, 1, 3, 3, dtype=torch.bool)}
    >>> w = reinitialize_kept_(net, keep, scheme="delta-orthogonal", generator=0)[0].weight.detach()
    >>> w[:, 0, 1, 1].abs().tolist(), int(torch.count_nonzero(w))  # a unit centre tap per channel
    ([1.0, 1.0, 1.0, 1.0], 4)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("scheme", scheme, REINIT_SCHEMES)
    gain = check_number("gain", gain, minimum=0.0, minimum_inclusive=False)
    generator = _generator(generator)
    params = dict(model.named_parameters())
    masks = check_bool_masks(masks, {n: p.shape for n, p in params.items()}, owner=type(model).__name__)
    for name in masks:
        if not params[name].is_floating_point():
            raise TypeError(f"parameter {name!r} is not floating point ({params[name].dtype}); leave it out of `masks`")
    # the layouts the rest of the package reads these tensors with (a tied head as its Linear, Conv1D transposed)
    entries = select_parameters(model, include=list(masks)).entries
    fresh = {name: _fresh(params[name], entries[name], scheme, gain, generator) for name in masks}
    for name, m in masks.items():
        p = params[name]
        p.copy_(torch.where(m.to(p.device), fresh[name].to(device=p.device, dtype=p.dtype), p))
    return model
