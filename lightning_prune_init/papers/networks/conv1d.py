"""The small 1-D conv net of the MNIST-1D benchmark (Greydanus 2020): three strided convolutions and a linear layer.

>>> net = ConvNet1D()
>>> net(torch.randn(4, 1, 40)).shape, net.input_shape
(torch.Size([4, 10]), (1, 40))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init._validation import check_int

__all__ = ["ConvNet1D"]

# (kernel size, stride, padding) of the three convolutions, as the benchmark's ``ConvBase``.
_CONVS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))


def _conv_length(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class ConvNet1D(nn.Module):
    """MNIST-1D's CNN: conv1d(k5,s2,p1)-ReLU, 2 x conv1d(k3,s2,p1)-ReLU, flatten, linear to ``num_classes``.

    Input ``[N, in_channels, input_length]`` (or ``[N, input_length]`` when ``in_channels == 1``), output
    ``[N, num_classes]``. Each convolution has ``channels`` output channels; the sequence length after
    conv ``i`` is ``L_i = (L_{i-1} + 2*p - k) // s + 1``: 40 -> 19 -> 10 -> 5, so the linear layer takes
    ``channels * 5 = 125`` features (the benchmark's ``linear_in=125``). The benchmark's paper reports
    about 94% test accuracy for this net trained densely.

    Weights for 1x40 inputs, 25 channels and 10 classes (:func:`count_weights`):
    ``1*25*5 + 25*25*3 + 25*25*3 + 125*10 = 5,125``; biases ``3*25 + 10 = 85``; 5,210 parameters. Modules
    ``conv1``, ``conv2``, ``conv3``, ``fc``. Orthogonal init applies (every conv has ``c_in <= c_out``).

    Args:
        channels: output channels of every convolution, >= 1. Default 25.
        num_classes: number of logits. Default 10.
        in_channels: input channels. Default 1.
        input_length: length of one input sequence; must leave at least one position after the three
            convolutions (>= 3). Default 40 (MNIST-1D).

    >>> from lightning_prune_init.papers import count_weights
    >>> count_weights(ConvNet1D())
    5125
    """

    def __init__(self, channels: int = 25, num_classes: int = 10, in_channels: int = 1, input_length: int = 40) -> None:
        super().__init__()
        for name, value in [("channels", channels), ("num_classes", num_classes), ("in_channels", in_channels),
                            ("input_length", input_length)]:
            check_int(name, value, minimum=1)
        length = input_length
        for kernel, stride, padding in _CONVS:
            length = _conv_length(length, kernel, stride, padding)
        if length < 1:
            raise ValueError(f"`input_length` must be at least 3 for ConvNet1D (three strided convolutions), got {input_length}")
        self.num_classes = num_classes
        self.channels = channels
        self.input_shape = (in_channels, input_length)
        widths = [in_channels, channels, channels, channels]
        for i, (kernel, stride, padding) in enumerate(_CONVS):
            self.add_module(f"conv{i + 1}", nn.Conv1d(widths[i], widths[i + 1], kernel, stride=stride, padding=padding))
        self.fc = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, input_length]`` or ``[N, input_length]`` -> logits ``[N, num_classes]``."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.flatten(1))
