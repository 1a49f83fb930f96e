"""Orthogonal initializers, per matrix of a weight's layout: :func:`orthogonal_` and :func:`delta_orthogonal_`.

Both fill each matrix of the weight's :class:`~lightning_prune_init.layouts.MatrixLayout` on its own: every group
of a grouped or depthwise convolution, each of the query/key/value blocks of ``nn.MultiheadAttention``'s
``in_proj_weight``, the true ``[out, in]`` orientation of a transformers ``Conv1D`` (stored ``[in, out]``). Why
orthogonal weights (layerwise dynamical isometry): ``docs/method.md``, section 3.

========================================  ===============================  =================================
weight (per group ``g``)                   ``"orthogonal"``                 ``"delta-orthogonal"``
========================================  ===============================  =================================
matrix ``[rows, cols]``                    Haar, orthonormal rows or cols   same as ``"orthogonal"``
conv, ``c_in/g <= c_out/g``                block-orthogonal: isometry       orthogonal centre tap: isometry
conv, ``c_in/g > c_out/g``                 reshaped kernel ``W Wᵀ = I``     centre tap ``W Wᵀ = I``
depthwise conv (one channel per group)     ``±1`` at one tap near centre    ``±1`` at the centre tap
========================================  ===============================  =================================
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prune_init.init._haar import haar_orthonormal
from lightning_prune_init.init._paraunitary import block_orthogonal_kernel
from lightning_prune_init.init._tensors import check_gain, check_tensor, resolve_layout, work_device_dtype
from lightning_prune_init.layouts import MatrixLayout

__all__ = ["delta_orthogonal_", "orthogonal_"]


@torch.no_grad()
def orthogonal_(
    tensor: Tensor, gain: float = 1.0, *, layout: MatrixLayout | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Fill ``tensor`` in place with a (block-)orthogonal weight times ``gain``, one matrix of ``layout`` at a time.

    * A matrix ``[rows, cols]`` (linear, transformers ``Conv1D`` as ``[out, in]``, one attention block, any other
      tensor as ``[d0, prod(rest)]``): orthonormal rows (``W Wᵀ = gain² I``) when ``rows <= cols``, orthonormal
      columns (``Wᵀ W = gain² I``) otherwise; QR of a Gaussian matrix with R's diagonal made positive (Haar).
    * A convolution group ``[c_out/g, c_in/g, *kernel]`` (1-, 2- or 3-D kernels): the block-orthogonal kernel of
      Xiao et al. 2018, Algorithm 1, the SPP authors' choice: taps ``W_a = M_a V`` of a random paraunitary
      polynomial ``M`` times ``V`` with orthonormal columns. With ``c_in/g <= c_out/g``, convolution with
      circular padding is norm preserving, ``‖conv(x)‖ = gain ‖x‖`` for every input size. With
      ``c_in/g > c_out/g`` the taps are ``U M_a`` (``M`` at the larger side, ``U`` with orthonormal rows), and
      the kernel reshaped to ``[c_out/g, c_in/g · prod(kernel)]`` has orthonormal rows: ``W Wᵀ = gain² I``.
      A depthwise group (one channel) gets ``±gain`` at one tap, binomially placed around the centre.

    Groups are drawn one after the other from ``generator``; a ``groups=1`` weight draws exactly what earlier
    versions drew.

    Args:
        tensor: a floating-point weight with at least 2 dimensions.
        gain: scale of the result (> 0, default 1), e.g. ``sqrt(2)`` for ReLU.
        layout: how ``tensor`` reads as matrices (:func:`~lightning_prune_init.layouts.layout_of`). Default
            ``None``: ``[out, in]`` for a 2-D tensor, a ``groups=1`` conv weight ``[c_out, c_in, *kernel]`` for
            more dimensions. Pass ``layout_of(conv, "weight")`` for a grouped or depthwise conv.
        generator: source of randomness (``torch.Generator``); draws happen on its device, in float64.

    Returns:
        ``tensor``.

    Raises:
        ValueError: fewer than 2 dimensions, a ``gain`` that is not > 0, a layout whose groups do not divide the
            output units.
        TypeError: not a floating-point tensor, or ``layout`` not a ``MatrixLayout``.

    >>> import torch
    >>> from lightning_prune_init.layouts import layout_of
    >>> depthwise = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    >>> layout = layout_of(depthwise, "weight")  # MatrixLayout(kind='conv', groups=4, kernel=(3, 3))
    >>> _ = orthogonal_(depthwise.weight, layout=layout, generator=torch.Generator().manual_seed(0))
    >>> depthwise.weight.detach().abs().sum((1, 2, 3))  # one unit tap per channel: power gain 1
    tensor([1., 1., 1., 1.])
    >>> w = orthogonal_(torch.empty(4, 8, 3, 3))  # c_in > c_out: orthonormal rows of the reshaped kernel
    >>> torch.allclose(w.reshape(4, -1) @ w.reshape(4, -1).T, torch.eye(4), atol=1e-6)
    True
    """
    check_tensor(tensor, "orthogonal_")
    gain = check_gain(gain)
    layout = resolve_layout(tensor, layout, "orthogonal_")
    if tensor.numel() == 0:
        return tensor
    device, dtype = work_device_dtype(tensor, generator)
    groups, rows, cols = layout.matrix_shape(tensor.shape)
    if layout.kind == "conv":
        kernel = tuple(tensor.shape[2:])
        weight = block_orthogonal_kernel(groups, rows, tensor.shape[1], kernel, generator, device, dtype)
        return tensor.copy_(gain * weight)
    return layout.copy_matrices_(tensor, gain * haar_orthonormal(groups, rows, cols, generator, device, dtype))


@torch.no_grad()
def delta_orthogonal_(
    tensor: Tensor, gain: float = 1.0, *, layout: MatrixLayout | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Fill a conv weight in place with an orthogonal centre tap per group and zeros elsewhere.

    In each group ``g`` the centre tap ``W[g, :, :, k_1//2, k_2//2, ...]`` (for even sizes, the tap just after
    the middle) is ``gain`` times a Haar ``c_out/g x c_in/g`` matrix with orthonormal columns
    (``c_in/g <= c_out/g``: the convolution is an isometry, power gain ``gain²`` away from the borders) or
    orthonormal rows (``c_in/g > c_out/g``: the reshaped kernel has ``W Wᵀ = gain² I``). A depthwise conv gets
    ``±gain`` at the centre of every channel. A weight whose layout is not a convolution (2-D, Conv1D, attention
    blocks) gets :func:`orthogonal_`.

    Args:
        tensor: a floating-point weight with at least 2 dimensions.
        gain: scale of the centre tap (> 0, default 1).
        layout: as in :func:`orthogonal_` (default: ``groups=1`` conv for 3+ dimensions, ``[out, in]`` for 2).
        generator: source of randomness (``torch.Generator``).

    Returns:
        ``tensor``.

    >>> import torch
    >>> from lightning_prune_init.layouts import MatrixLayout
    >>> w = delta_orthogonal_(torch.empty(6, 1, 3, 3), layout=MatrixLayout("conv", groups=6, kernel=(3, 3)))
    >>> w[:, 0, 1, 1].abs().tolist(), int(torch.count_nonzero(w))
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 6)
    """
    check_tensor(tensor, "delta_orthogonal_")
    gain = check_gain(gain)
    layout = resolve_layout(tensor, layout, "delta_orthogonal_")
    if layout.kind != "conv" or tensor.dim() < 3:
        return orthogonal_(tensor, gain, layout=layout, generator=generator)
    if tensor.numel() == 0:
        return tensor
    device, dtype = work_device_dtype(tensor, generator)
    groups, rows, _ = layout.matrix_shape(tensor.shape)
    centre = haar_orthonormal(groups, rows, tensor.shape[1], generator, device, dtype)
    tensor.zero_()
    tensor[(slice(None), slice(None)) + tuple(k // 2 for k in tensor.shape[2:])] = gain * centre.reshape(
        groups * rows, tensor.shape[1]
    )
    return tensor
