"""The LeNets of SNIP (Lee et al. 2019): LeNet-300-100 (fully connected) and LeNet-5-Caffe (conv).

>>> LeNet300()(torch.randn(2, 1, 28, 28)).shape
torch.Size([2, 10])
>>> LeNet5(in_channels=3, input_size=32)(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init._validation import check_int
from lightning_prune_init.papers.networks.shapes import input_shape_of

__all__ = ["LeNet300", "LeNet5"]


class LeNet300(nn.Module):
    """LeNet-300-100: linear ``d``-300-100-10 with ReLU (SNIP's ``lenet300``), ``d = prod(input_shape)``.

    Input ``[N, *input_shape]``, output ``[N, num_classes]``; ``input_shape`` is
    ``(in_channels, input_size, input_size)`` unless given explicitly (``(1, 40)`` for MNIST-1D).
    Weights: ``784*300 + 300*100 + 100*10 = 266,200`` (for 1x28x28 and 10 classes; 43,000 for MNIST-1D's
    40 inputs). Biases: ``300 + 100 + 10 = 410``; 266,610 parameters in all. Layers ``fc1``, ``fc2``, ``fc3``.

    Args:
        num_classes: number of logits. Default 10.
        in_channels, input_size: shape of one square input image. Default ``(1, 28, 28)``.
        input_shape: shape of one input when it is not a square image, e.g. ``(1, 40)``; overrides
            ``in_channels`` and ``input_size``. Default None.

    >>> LeNet300(input_shape=(1, 40)).fc1.weight.shape
    torch.Size([300, 40])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        self.num_classes = num_classes
        self.input_shape = input_shape_of(in_channels, input_size, input_shape)
        self.fc1 = nn.Linear(math.prod(self.input_shape), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, *input_shape]`` -> logits ``[N, num_classes]``."""
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv 5x5 20, maxpool 2, conv 5x5 50, maxpool 2, fc 500, ReLU, fc 10.

    As in Caffe's LeNet and SNIP's ``lenet5``, the convolutions are valid (no padding) and are **not**
    followed by an activation; only ``fc1`` is. Input ``[N, in_channels, input_size, input_size]``,
    output ``[N, num_classes]``. The spatial size after the two conv/pool stages is
    ``s = ((input_size - 4) // 2 - 4) // 2`` (4 for 28, 5 for 32).

    Weights for 1x28x28 and 10 classes: ``1*20*25 + 20*50*25 + 800*500 + 500*10 = 430,500``.
    Biases: ``20 + 50 + 500 + 10 = 580``; 431,080 parameters in all. For 3x32x32:
    ``3*20*25 + 20*50*25 + 1250*500 + 500*10 = 656,500`` weights.
    Layers ``conv1``, ``conv2``, ``fc1``, ``fc2``.

    Args:
        num_classes: number of logits. Default 10.
        in_channels, input_size: shape of one input image. Default ``(1, 28, 28)``; ``input_size``
            must be at least 16.

    >>> LeNet5().fc1.weight.shape
    torch.Size([500, 800])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        self.input_shape = input_shape_of(in_channels, input_size, None)
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"`input_size` must be at least 16 for LeNet5, got {input_size}")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
