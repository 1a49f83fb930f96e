"""MLP-K of SPP (Lee et al. 2020, §4): ``K`` linear layers of width 100, one activation between layers.

>>> net = MLP(depth=3, activation="relu", input_shape=(1, 40))  # MNIST-1D's MLP (Greydanus 2020)
>>> net(torch.randn(5, 1, 40)).shape, net.input_shape
(torch.Size([5, 10]), (1, 40))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from lightning_prune_init._validation import check_bool, check_choice, check_int
from lightning_prune_init.papers.networks.shapes import input_shape_of

__all__ = ["MLP"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


class MLP(nn.Module):
    """MLP-K of SPP: ``depth`` linear layers, hidden width ``width``, one activation between layers.

    Input ``[N, *input_shape]`` (flattened) or already flat ``[N, prod(input_shape)]``; output logits
    ``[N, num_classes]``. The activation follows every layer but the last. ``input_shape`` is
    ``(in_channels, input_size, input_size)`` unless given explicitly (``(1, 40)`` for MNIST-1D).

    Weights (``d = prod(input_shape)``, 784 by default; ``w = width``):
    ``d*w + (depth-2)*w*w + w*num_classes`` for ``depth >= 2`` (``d*num_classes`` for ``depth=1``).
    With the defaults: MLP-3 89,400; MLP-5 109,400; MLP-7 129,400 weights; on MNIST-1D (``d = 40``)
    MLP-3 15,000 and MLP-7 55,000. Biases (if ``bias``): ``(depth-1)*w + num_classes`` more (210, 410, 610).

    Args:
        depth: K, the number of weight (linear) layers, >= 1. Default 3.
        width: hidden units per hidden layer. Default 100.
        activation: ``"linear"`` (identity), ``"tanh"`` or ``"relu"``. Default ``"tanh"``.
        num_classes: number of logits. Default 10.
        in_channels, input_size: shape of one square input image, ``(in_channels, input_size, input_size)``.
            Default ``(1, 28, 28)``.
        bias: whether the linear layers have biases. Default True.
        input_shape: shape of one input when it is not a square image, e.g. ``(1, 40)``; overrides
            ``in_channels`` and ``input_size``. Default None.

    Layers are named ``fc1`` ... ``fc{depth}``.

    >>> [tuple(p.shape) for p in MLP(depth=3, width=8, input_shape=(4,)).parameters()][::2]
    [(8, 4), (8, 8), (10, 8)]
    """

    def __init__(
        self,
        depth: int = 3,
        width: int = 100,
        activation: Literal["linear", "tanh", "relu"] = "tanh",
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        bias: bool = True,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        for name, value in [("depth", depth), ("width", width), ("num_classes", num_classes)]:
            check_int(name, value, minimum=1)
        check_choice("activation", activation, tuple(_ACTIVATIONS))
        check_bool("bias", bias)
        self.depth = depth
        self.width = width
        self.activation = activation
        self.num_classes = num_classes
        self.input_shape = input_shape_of(in_channels, input_size, input_shape)
        sizes = [math.prod(self.input_shape)] + [width] * (depth - 1) + [num_classes]
        self.layer_names: list[str] = []
        for i in range(depth):
            name = f"fc{i + 1}"
            self.add_module(name, nn.Linear(sizes[i], sizes[i + 1], bias=bias))
            self.layer_names.append(name)
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, *input_shape]`` or ``[N, prod(input_shape)]`` -> logits ``[N, num_classes]``."""
        x = x.flatten(1)
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i < self.depth - 1:
                x = self.act(x)
        return x
