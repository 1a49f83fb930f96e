"""Exact singular values of a stride-1 2-D convolution operator with circular padding, by the FFT.

Sedghi, Gupta & Long (2019): the operator of a convolution with circular padding is block circulant, so its
singular values are those of the ``h·w`` matrices ``K̂(u, v) = Σ_{p,q} K[:, :, p, q] e^{-2πi(pu/h + qv/w)}`` (one
``[c_out, c_in]`` matrix per frequency). A grouped convolution is block diagonal over its groups: its values are
those of the groups pooled. The reshaped kernel ``[c_out, c_in·kh·kw]`` of the ``"weights"`` scope is only a proxy
of the operator; this gives the operator's values (docs/monitoring.md).

>>> import torch
>>> identity = torch.zeros(2, 2, 3, 3)
>>> identity[0, 0, 1, 1] = identity[1, 1, 1, 1] = 1.0  # a unit centre tap: the identity operator
>>> conv_singular_values_fft(identity, (4, 4)).unique().tolist()
[1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_prune_init._validation import check_int

__all__ = ["conv_singular_values_fft"]


def conv_singular_values_fft(weight: Tensor, input_size: Sequence[int], groups: int = 1) -> Tensor:
    """Exact singular values of a 2-D convolution operator with circular padding (Sedghi et al. 2019).

    The operator maps ``[c_in, h, w] -> [c_out, h, w]`` (stride 1, dilation 1, circular padding of any amount; the
    padding only shifts the output, which does not change singular values). Its singular values are those of the
    ``h·w`` matrices ``Σ_{p,q} K[:, :, p, q] e^{-2πi(pu/h + qv/w)}``, for each group.

    Args:
        weight: ``[c_out, c_in / groups, kh, kw]`` kernel.
        input_size: ``(h, w)``, each at least the kernel size.
        groups: the convolution's ``groups`` (default 1); ``c_out`` must be a multiple of it. A depthwise conv has
            ``groups = c_out`` and one value per channel and frequency.

    Returns:
        ``[groups · h·w · min(c_out / groups, c_in / groups)]`` tensor in ``weight``'s dtype, sorted in descending
        order.

    Raises:
        ValueError: ``weight`` is not 4-D, ``input_size`` is smaller than the kernel, ``groups`` does not divide
            ``c_out``.

    >>> depthwise = torch.ones(3, 1, 1, 1) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)
    >>> conv_singular_values_fft(depthwise, (1, 2), groups=3).tolist()  # channel c scales by c+1
    [3.0, 3.0, 2.0, 2.0, 1.0, 1.0]
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(getattr(weight, "shape", ()))
        raise ValueError(f"`weight` must be a [c_out, c_in / groups, kh, kw] tensor, got shape {shape}")
    check_int("groups", groups, minimum=1)
    h, w = (int(s) for s in input_size)
    c_out, c_in_g, kh, kw = weight.shape
    if h < kh or w < kw:
        raise ValueError(f"`input_size` {(h, w)} must be at least the kernel size {(kh, kw)}")
    if c_out % groups:
        raise ValueError(f"`groups`={groups} must divide the {c_out} output channels of `weight`")
    blocks = weight.detach().double().reshape(groups, c_out // groups, c_in_g, kh, kw)
    transfer = torch.fft.fft2(blocks, s=(h, w), dim=(-2, -1)).permute(0, 3, 4, 1, 2)  # [g, h, w, c_out/g, c_in/g]
    values = torch.linalg.svdvals(transfer).flatten()
    return values.sort(descending=True).values.to(weight.dtype)
