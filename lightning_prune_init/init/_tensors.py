"""How an initializer reads the tensor it fills: the checks every one makes and the matrix layout it works on.

Every initializer of :mod:`lightning_prune_init.init` works per matrix of a
:class:`~lightning_prune_init.layouts.MatrixLayout` (``layout.matrices(tensor)`` is ``[groups, rows, cols]``).
Without a ``layout`` a tensor is read as PyTorch stores ``nn.Linear`` and ``groups=1`` convolution weights:
``[out, in]`` is ``MatrixLayout("linear")`` and ``[c_out, c_in, *kernel]`` is ``MatrixLayout("conv", 1, kernel)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prune_init._validation import check_number
from lightning_prune_init.layouts import MatrixLayout

__all__: list[str] = []


def check_tensor(tensor: object, function: str) -> Tensor:
    """``tensor`` if it is a floating-point tensor, else ``TypeError`` naming ``function``."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{function}: `tensor` must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{function}: `tensor` must be a floating-point tensor, got {tensor.dtype}")
    return tensor


def check_gain(gain: object) -> float:
    """``gain`` as a float, finite and > 0."""
    return check_number("gain", gain, minimum=0.0, minimum_inclusive=False)


def resolve_layout(tensor: Tensor, layout: MatrixLayout | None, function: str) -> MatrixLayout:
    """The layout to use for ``tensor``: ``layout`` checked against its shape, or the default for its dimensions.

    Raises:
        TypeError: ``layout`` is not a :class:`MatrixLayout`.
        ValueError: fewer than 2 dimensions, a ``"vector"`` layout, or groups that do not divide the rows.
    """
    if layout is None:
        if tensor.dim() < 2:
            raise ValueError(
                f"{function} needs a weight with at least 2 dimensions ([out, in] or [c_out, c_in/groups, *kernel]), "
                f"got shape {tuple(tensor.shape)}"
            )
        layout = MatrixLayout("linear") if tensor.dim() == 2 else MatrixLayout("conv", 1, tuple(tensor.shape[2:]))
    if not isinstance(layout, MatrixLayout):
        raise TypeError(
            f"{function}: `layout` must be a MatrixLayout (lightning_prune_init.layouts.layout_of(module, 'weight')) "
            f"or None, got {type(layout).__name__}"
        )
    if not layout.is_matrix:
        raise ValueError(
            f"{function}: a tensor of shape {tuple(tensor.shape)} with layout kind 'vector' is not a linear map; the "
            "initializers fill matrices (set a bias to zero instead)"
        )
    layout.matrix_shape(tensor.shape)  # raises if the groups do not divide the output units
    return layout


def work_device_dtype(tensor: Tensor, generator: torch.Generator | None) -> tuple[torch.device, torch.dtype]:
    """Where to draw (the generator's device, as :mod:`torch.nn.init`) and the precision to work in (float64;
    float32 on MPS, which has no float64)."""
    device = generator.device if generator is not None else tensor.device
    return device, (torch.float32 if device.type == "mps" else torch.float64)
