"""Variance-scaling Gaussians (SPP's VS-L, VS-G, VS-H) with fans counted per matrix of the weight's layout.

``fan_in`` and ``fan_out`` are those of one matrix of the :class:`~lightning_prune_init.layouts.MatrixLayout`:
a conv group counts ``c_in/g · prod(kernel)`` inputs and ``c_out/g · prod(kernel)`` outputs, a transformers
``Conv1D`` stored ``[in, out]`` has ``fan_in = in``, each attention q/k/v block ``[E, E]`` has ``E`` of each.
For ``nn.Linear`` and ``groups=1`` convs these are PyTorch's fans (``docs/method.md``, section 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_prune_init._validation import check_choice, check_number
from lightning_prune_init.init._tensors import check_tensor, resolve_layout
from lightning_prune_init.layouts import MatrixLayout

__all__ = ["VARIANCE_SCALING_MODES", "calculate_fans", "variance_scaling_"]

#: Accepted values of ``variance_scaling_(mode=...)``: ``base`` = ``1/fan_in``, ``2/(fan_in + fan_out)``, ``2/fan_in``.
VARIANCE_SCALING_MODES: tuple[str, ...] = ("lecun", "glorot", "he")


def calculate_fans(tensor: Tensor, layout: MatrixLayout | None = None) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of one matrix of ``tensor`` read with ``layout``.

    ``fan_in = cols`` and ``fan_out = rows`` of each ``[rows, cols]`` matrix, except for conv weights, whose
    ``fan_out`` counts the taps too: ``[c_out, c_in/g, *k]`` -> ``(c_in/g · prod(k), c_out/g · prod(k))``.

    Args:
        tensor: a weight with at least 2 dimensions.
        layout: as in :func:`~lightning_prune_init.init.orthogonal_` (default: ``[out, in]`` or a ``groups=1`` conv).

    Raises:
        ValueError: ``tensor`` has fewer than 2 dimensions (a bias has no fan-in).

    >>> calculate_fans(torch.empty(64, 3, 3, 3))
    (27, 576)
    >>> calculate_fans(torch.empty(32, 1, 3, 3), MatrixLayout("conv", groups=32, kernel=(3, 3)))  # depthwise
    (9, 9)
    >>> calculate_fans(torch.empty(16, 48), MatrixLayout("transposed"))  # transformers Conv1D(48, 16)
    (16, 48)
    """
    layout = resolve_layout(tensor, layout, "calculate_fans")
    _, rows, cols = layout.matrix_shape(tensor.shape)
    receptive = math.prod(tensor.shape[2:]) if layout.kind == "conv" else 1
    return cols, rows * receptive


@torch.no_grad()
def variance_scaling_(
    tensor: Tensor,
    mode: str = "lecun",
    gamma: float = 1.0,
    *,
    layout: MatrixLayout | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``tensor`` in place with ``N(0, gamma · base)``, untruncated, ``base`` from the fans of one matrix.

    Args:
        tensor: a weight with at least 2 dimensions.
        mode: ``"lecun"`` (VS-L, ``base = 1/fan_in``), ``"glorot"`` (VS-G, ``base = 2/(fan_in + fan_out)``)
            or ``"he"`` (VS-H, ``base = 2/fan_in``). Default ``"lecun"``.
        gamma: variance multiplier γ of SPP's "scaled Gaussian" (> 0, default 1). A standard-deviation gain
            ``g`` corresponds to ``gamma = g**2``.
        layout: how ``tensor`` reads as matrices (:func:`calculate_fans`); every entry gets the same variance,
            drawn in storage order as ``Tensor.normal_`` does.
        generator: source of randomness (``torch.Generator``), as in :mod:`torch.nn.init`.

    Returns:
        ``tensor``.

    Raises:
        ValueError: unknown ``mode``, ``gamma <= 0``, or a tensor with fewer than 2 dimensions.

    >>> w = variance_scaling_(torch.empty(500, 400), "he", generator=torch.Generator().manual_seed(0))
    >>> round(w.var().item() * 400 / 2, 1)
    1.0
    """
    check_tensor(tensor, "variance_scaling_")
    check_choice("mode", mode, VARIANCE_SCALING_MODES)
    gamma = check_number("gamma", gamma, minimum=0.0, minimum_inclusive=False)
    fan_in, fan_out = calculate_fans(tensor, layout)
    if tensor.numel() == 0:
        return tensor
    base = {"lecun": 1.0 / fan_in, "glorot": 2.0 / (fan_in + fan_out), "he": 2.0 / fan_in}[mode]
    return tensor.normal_(0.0, math.sqrt(gamma * base), generator=generator)
