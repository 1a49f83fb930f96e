"""Initializers studied by SPP (METHOD.md §2), in the style of :mod:`torch.nn.init`.

Every initializer works in place on a weight tensor in PyTorch layout (linear ``[out, in]``, conv
``[c_out, c_in, *kernel]``), runs without recording autograd history, accepts a ``generator`` and returns
the tensor. :func:`init_model_` applies one scheme to every prunable weight of a model and zeroes the
matching biases.

* :func:`variance_scaling_`: untruncated normal with variance ``gamma * base``, ``base`` = ``1/fan_in``
  (VS-L, LeCun), ``2/(fan_in + fan_out)`` (VS-G, Glorot) or ``2/fan_in`` (VS-H, He).
* :func:`orthogonal_`: a linear weight gets orthonormal rows or columns (QR of a Gaussian matrix, sign
  corrected, so Haar distributed); a conv weight gets the block-orthogonal kernel of Xiao et al. 2018
  (Algorithm 1), as in the SPP authors' code: with circular padding the convolution is an exactly
  norm-preserving map from ``c_in`` to ``c_out`` channels.
* :func:`delta_orthogonal_`: orthogonal centre tap, every other tap zero.

``fan_in = c_in * prod(kernel)`` and ``fan_out = c_out * prod(kernel)`` for conv weights (METHOD.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_prune_init.parameters import prunable_parameters

__all__ = [
    "SCHEMES",
    "VARIANCE_SCALING_MODES",
    "calculate_fans",
    "delta_orthogonal_",
    "init_model_",
    "orthogonal_",
    "variance_scaling_",
]

#: Accepted values of ``variance_scaling_(mode=...)`` and the variance each gives (times ``gamma``).
VARIANCE_SCALING_MODES: tuple[str, ...] = ("lecun", "glorot", "he")

#: Accepted values of ``init_model_(scheme=...)``.
SCHEMES: tuple[str, ...] = ("orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he")


def calculate_fans(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight.

    ``[out, in]`` -> ``(in, out)``; ``[c_out, c_in, *k]`` -> ``(c_in * prod(k), c_out * prod(k))``.

    Raises:
        ValueError: ``tensor`` has fewer than 2 dimensions (a bias has no fan-in).
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"fan-in and fan-out need a weight with at least 2 dimensions ([out, in] or [c_out, c_in, *kernel]), "
            f"got shape {tuple(tensor.shape)}"
        )
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _check_tensor(tensor: object, argument: str = "tensor") -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"`{argument}` must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"`{argument}` must be a floating-point tensor, got {tensor.dtype}")
    return tensor


def _check_gain(gain: float) -> float:
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise TypeError(f"`gain` must be a positive number, got {type(gain).__name__}")
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"`gain` must be a finite number > 0, got {gain}")
    return float(gain)


def _work_device_dtype(tensor: Tensor, generator: torch.Generator | None) -> tuple[torch.device, torch.dtype]:
    """Where to draw random numbers (the generator's device, as torch.nn.init) and the precision to work in."""
    device = generator.device if generator is not None else tensor.device
    return device, (torch.float32 if device.type == "mps" else torch.float64)


def _haar_orthonormal(
    rows: int, cols: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A Haar ``rows x cols`` matrix with orthonormal columns (``rows >= cols``) or rows (``rows < cols``)."""
    tall = rows >= cols
    gaussian = torch.randn(max(rows, cols), min(rows, cols), generator=generator, device=device, dtype=dtype)
    q, r = torch.linalg.qr(gaussian)
    # QR is unique up to the signs of R's diagonal; fixing them makes Q Haar distributed.
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
    return q if tall else q.T


@torch.no_grad()
def variance_scaling_(
    tensor: Tensor,
    mode: str = "lecun",
    gamma: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``tensor`` in place with ``N(0, gamma * base)``, untruncated.

    Args:
        tensor: a weight, ``[out, in]`` or ``[c_out, c_in, *kernel]``.
        mode: ``"lecun"`` (VS-L, ``base = 1/fan_in``), ``"glorot"`` (VS-G, ``base = 2/(fan_in + fan_out)``)
            or ``"he"`` (VS-H, ``base = 2/fan_in``). Default ``"lecun"``.
        gamma: variance multiplier γ of SPP's "scaled Gaussian" (> 0, default 1). A standard-deviation gain
            ``g`` corresponds to ``gamma = g**2``.
        generator: source of randomness (``torch.Generator``), as in :mod:`torch.nn.init`.

    Returns:
        ``tensor``.

    Raises:
        ValueError: unknown ``mode``, ``gamma <= 0``, or a tensor with fewer than 2 dimensions.
    """
    _check_tensor(tensor)
    if mode not in VARIANCE_SCALING_MODES:
        raise ValueError(f"`mode` must be one of {VARIANCE_SCALING_MODES}, got {mode!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"`gamma` (variance multiplier) must be a finite number > 0, got {gamma!r}")
    fan_in, fan_out = calculate_fans(tensor)
    base = {"lecun": 1.0 / fan_in, "glorot": 2.0 / (fan_in + fan_out), "he": 2.0 / fan_in}[mode]
    return tensor.normal_(0.0, math.sqrt(gamma * base), generator=generator)


def _check_conv_kernel(tensor: Tensor, function: str) -> tuple[int, int, tuple[int, ...]]:
    c_out, c_in, *kernel = tensor.shape
    if any(k < 1 for k in kernel) or c_out < 1 or c_in < 1:
        raise ValueError(f"{function}: cannot initialize an empty weight of shape {tuple(tensor.shape)}")
    return c_out, c_in, tuple(kernel)


def _block_orthogonal_taps(
    channels: int,
    kernel: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Taps ``[*kernel, channels, channels]`` of a random paraunitary polynomial (Xiao et al. 2018, Algorithm 1).

    The polynomial is a product of first-order factors ``P + (I - P) z_d`` with ``P`` the orthogonal projection
    onto a random subspace (an orthonormal basis times a random half of its vectors). Each factor is orthogonal
    at every ``|z_d| = 1``, so the product is too, and so is the convolution it defines under circular padding.
    Factors alternate over the spatial dimensions (``z_1, z_2, z_1, z_2, ...`` for a square 2-D kernel, the
    authors' order) until dimension ``d`` has ``kernel[d]`` taps.
    """
    eye = torch.eye(channels, device=device, dtype=dtype)
    taps = eye.reshape((1,) * len(kernel) + (channels, channels))
    remaining = [k - 1 for k in kernel]
    while any(remaining):
        for d, left in enumerate(remaining):
            if not left:
                continue
            basis = _haar_orthonormal(channels, channels, generator, device, dtype)
            keep = torch.rand(channels, generator=generator, device=device) < 0.5
            half = basis[:, keep.to(device)]
            projection = half @ half.T
            # taps' of M(z) (P + (I - P) z_d): new tap a = M_a P + M_{a-1} (I - P) along dimension d.
            pad_after = [0, 0] * (len(kernel) - d - 1) + [0, 1]
            pad_before = [0, 0] * (len(kernel) - d - 1) + [1, 0]
            # F.pad pads from the last dimension backwards; the two matrix dims come last, so skip them.
            shifted_spec = [0, 0, 0, 0] + pad_before
            kept_spec = [0, 0, 0, 0] + pad_after
            taps = torch.nn.functional.pad(taps, kept_spec) @ projection + torch.nn.functional.pad(
                taps, shifted_spec
            ) @ (eye - projection)
            remaining[d] -= 1
    return taps


@torch.no_grad()
def orthogonal_(
    tensor: Tensor,
    gain: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``tensor`` in place with a (block-)orthogonal weight times ``gain``.

    * Linear weight ``[out, in]``: orthonormal rows (``W Wᵀ = gain² I``) when ``out <= in``, orthonormal
      columns (``Wᵀ W = gain² I``) otherwise; QR of a Gaussian matrix with R's diagonal made positive (Haar).
    * Conv weight ``[c_out, c_in, *kernel]`` (1-, 2- or 3-D kernels): the block-orthogonal construction of
      Xiao et al. 2018, Algorithm 1 ("conv_orthogonal" in the authors' code): taps ``W_a = M_a V`` of a random
      paraunitary polynomial ``M`` (``c_out x c_out``) times ``V``, the first ``c_in`` columns of a random
      orthogonal matrix. The convolution with circular padding is then norm preserving (an isometry from
      ``c_in`` to ``c_out`` channels, orthogonal when ``c_in = c_out``), for any input size. Square 2-D kernels
      give the paper's construction; other kernel shapes use the same factors per dimension.

    Args:
        tensor: weight with at least 2 dimensions.
        gain: scale of the result (> 0, default 1), e.g. ``sqrt(2)`` for ReLU.
        generator: source of randomness (``torch.Generator``).

    Returns:
        ``tensor``.

    Raises:
        ValueError: fewer than 2 dimensions; a conv weight with ``c_in > c_out`` (no norm-preserving
            block-orthogonal kernel exists; use :func:`delta_orthogonal_`, whose centre tap then has
            orthonormal rows).
    """
    _check_tensor(tensor)
    gain = _check_gain(gain)
    if tensor.dim() < 2:
        raise ValueError(
            f"orthogonal_ needs a weight with at least 2 dimensions ([out, in] or [c_out, c_in, *kernel]), "
            f"got shape {tuple(tensor.shape)}"
        )
    device, dtype = _work_device_dtype(tensor, generator)
    if tensor.dim() == 2:
        rows, cols = tensor.shape
        if rows == 0 or cols == 0:
            return tensor
        return tensor.copy_(gain * _haar_orthonormal(rows, cols, generator, device, dtype))

    c_out, c_in, kernel = _check_conv_kernel(tensor, "orthogonal_")
    if c_in > c_out:
        raise ValueError(
            f"orthogonal_: the block-orthogonal conv construction (Xiao et al. 2018) needs c_in <= c_out, got "
            f"c_in={c_in} > c_out={c_out} for a weight of shape {tuple(tensor.shape)}; use delta_orthogonal_ "
            "(init_model_(scheme='delta-orthogonal')) for this layer, or exclude it"
        )
    taps = _block_orthogonal_taps(c_out, kernel, generator, device, dtype)  # [*kernel, c_out, c_out]
    columns = _haar_orthonormal(c_out, c_in, generator, device, dtype)  # [c_out, c_in]
    weight = (taps @ columns).movedim((-2, -1), (0, 1))  # [c_out, c_in, *kernel]
    return tensor.copy_(gain * weight)


@torch.no_grad()
def delta_orthogonal_(
    tensor: Tensor,
    gain: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill a conv weight ``[c_out, c_in, *kernel]`` in place with an orthogonal centre tap and zeros elsewhere.

    The centre tap ``W[:, :, k_1//2, k_2//2, ...]`` (for even sizes, the tap just after the middle) is
    ``gain`` times a Haar ``c_out x c_in`` matrix with orthonormal columns (``c_in <= c_out``: the conv is an
    isometry) or orthonormal rows (``c_in > c_out``). A 2-D tensor is treated as a 1x1 kernel
    (i.e. :func:`orthogonal_`).

    Args:
        tensor: weight with at least 2 dimensions.
        gain: scale of the centre tap (> 0, default 1).
        generator: source of randomness (``torch.Generator``).

    Returns:
        ``tensor``.
    """
    _check_tensor(tensor)
    gain = _check_gain(gain)
    if tensor.dim() < 3:
        return orthogonal_(tensor, gain, generator=generator)
    c_out, c_in, kernel = _check_conv_kernel(tensor, "delta_orthogonal_")
    device, dtype = _work_device_dtype(tensor, generator)
    centre = _haar_orthonormal(c_out, c_in, generator, device, dtype)
    tensor.zero_()
    tensor[(slice(None), slice(None)) + tuple(k // 2 for k in kernel)] = gain * centre
    return tensor


def _bias_of(model: nn.Module, param_name: str) -> nn.Parameter | None:
    module_name, _, _ = param_name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    bias = module._parameters.get("bias")
    return bias if isinstance(bias, nn.Parameter) else None


@torch.no_grad()
def init_model_(
    model: nn.Module,
    scheme: str = "orthogonal",
    gain: float = 1.0,
    *,
    gamma: float = 1.0,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    zero_biases: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-initialize every prunable weight of ``model`` with one scheme and zero the matching biases.

    The layers are those of :func:`~lightning_prune_init.parameters.prunable_parameters` (by default the
    weights of every Linear and Conv1d/2d/3d layer, first and last included). Every weight is checked before
    any is changed: if one cannot take the scheme, ``model`` is left untouched. Parameters keep their
    identity (written in place). Norm layers and other parameters are not touched.

    Args:
        model: the module to initialize.
        scheme: ``"orthogonal"`` (linear: :func:`orthogonal_`; conv: block-orthogonal, the SPP authors'
            choice; default), ``"delta-orthogonal"`` (linear: :func:`orthogonal_`; conv:
            :func:`delta_orthogonal_`), ``"vs-lecun"``, ``"vs-glorot"``, ``"vs-he"`` (:func:`variance_scaling_`).
        gain: scale of the weights (> 0, default 1): multiplies orthogonal weights, and the standard deviation
            of variance-scaling ones (variance times ``gain**2``).
        gamma: variance multiplier γ of the variance-scaling schemes (> 0, default 1); must stay 1 for the
            orthogonal schemes.
        include, exclude: glob patterns on parameter names choosing the weights, as in ``prunable_parameters``.
        zero_biases: set to zero the ``bias`` of each module whose weight is initialized (default True, as in
            the papers).
        generator: source of randomness (``torch.Generator``); the weights are drawn in parameter order.

    Returns:
        ``model``.

    Raises:
        ValueError: unknown ``scheme``; a selected parameter with fewer than 2 dimensions; a conv weight with
            ``c_in > c_out`` under ``"orthogonal"`` (the message names ``"delta-orthogonal"``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` must be one of {SCHEMES}, got {scheme!r}")
    gain = _check_gain(gain)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"`gamma` (variance multiplier) must be a finite number > 0, got {gamma!r}")
    if scheme in ("orthogonal", "delta-orthogonal") and gamma != 1.0:
        raise ValueError(
            f"`gamma` is the variance multiplier of the 'vs-*' schemes; scheme {scheme!r} takes `gain` instead "
            f"(got gamma={gamma})"
        )
    params = prunable_parameters(model, include=include, exclude=exclude, prune_biases=False)

    for name, p in params.items():
        if not p.is_floating_point():
            raise TypeError(f"init_model_: parameter {name!r} is not floating point ({p.dtype})")
        if p.dim() < 2:
            raise ValueError(
                f"init_model_: parameter {name!r} has shape {tuple(p.shape)}; the schemes need weights with at "
                "least 2 dimensions (leave biases out of `include`; they are zeroed with `zero_biases`)"
            )
        if scheme == "orthogonal" and p.dim() > 2 and p.shape[1] > p.shape[0]:
            raise ValueError(
                f"init_model_(scheme='orthogonal'): conv weight {name!r} of shape {tuple(p.shape)} has "
                f"c_in={p.shape[1]} > c_out={p.shape[0]}, which the block-orthogonal construction cannot "
                "initialize; use scheme='delta-orthogonal', or `exclude` this layer and initialize it yourself"
            )

    for name, p in params.items():
        if scheme == "orthogonal":
            orthogonal_(p, gain, generator=generator)
        elif scheme == "delta-orthogonal":
            delta_orthogonal_(p, gain, generator=generator)
        else:
            variance_scaling_(p, scheme[3:], gamma * gain**2, generator=generator)
        if zero_biases:
            bias = _bias_of(model, name)
            if bias is not None and bias is not p:
                bias.zero_()
    return model
