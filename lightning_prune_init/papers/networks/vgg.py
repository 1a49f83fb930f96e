"""The VGG variants of SNIP (Lee et al. 2019) for CIFAR-10: ``vgg-c``, ``vgg-d``, ``vgg-like``, with batch norm.

>>> net = VGG("like")
>>> net(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from lightning_prune_init._validation import check_choice, check_int
from lightning_prune_init.papers.networks.shapes import input_shape_of

__all__ = ["VGG"]

# (kernel size, output channels) per conv, "M" for a 2x2 max pool. Five blocks, as VGG-16.
_VGG_CONFIGS: dict[str, list[tuple[int, int] | str]] = {
    "C": [(3, 64), (3, 64), "M", (3, 128), (3, 128), "M", (3, 256), (3, 256), (1, 256), "M",
          (3, 512), (3, 512), (1, 512), "M", (3, 512), (3, 512), (1, 512), "M"],
    "D": [(3, 64), (3, 64), "M", (3, 128), (3, 128), "M", (3, 256), (3, 256), (3, 256), "M",
          (3, 512), (3, 512), (3, 512), "M", (3, 512), (3, 512), (3, 512), "M"],
}
_VGG_CONFIGS["like"] = _VGG_CONFIGS["D"]
# Hidden linear layers of the classifier, each followed by batch norm and ReLU.
_VGG_HIDDEN = {"C": [512, 512], "D": [512, 512], "like": [512]}


class VGG(nn.Module):
    """The VGG variants of SNIP for CIFAR-10 (``vgg-c``, ``vgg-d``, ``vgg-like``), with batch norm.

    13 convolutions in five blocks (64, 128, 256, 512, 512 channels; 2, 2, 3, 3, 3 convs), each
    conv followed by batch norm and ReLU, a 2x2 max pool after each block; padding keeps the spatial
    size, so a 32x32 input ends at 1x1x512. In version ``"C"`` the last conv of blocks 3-5 is 1x1
    (VGG-16 configuration C); ``"D"`` and ``"like"`` use 3x3 everywhere. Classifier: ``"C"`` and ``"D"``
    have two hidden linear layers of 512 (linear, batch norm, ReLU), ``"like"`` (Zagoruyko's
    VGG-like) one; then a linear layer to ``num_classes``. No dropout (batch norm instead, as SNIP).

    Weights for 3x32x32 and 10 classes (SNIP's Table 2 in parentheses):

    - ``"C"``: convs 9,991,872 + classifier 529,408 = **10,521,280** (10.5M);
    - ``"D"``: convs 14,710,464 + classifier 529,408 = **15,239,872** (15.2M);
    - ``"like"``: convs 14,710,464 + classifier 267,264 = **14,977,728** (15.0M).

    Other parameters: batch-norm weight and bias per channel (``2 * 4224`` in the convs, ``2 * 512``
    per hidden linear layer) and the last layer's bias (``num_classes``): C has 10,531,786 parameters,
    D 15,250,378, like 14,987,210.
    Conv and hidden linear layers have no bias (SNIP's code has zero-initialised ones).

    Input ``[N, in_channels, input_size, input_size]``; output ``[N, num_classes]``. With
    ``input_size`` larger than 32 the first classifier layer takes ``512 * (input_size // 32)**2``
    features. Layers are named ``features.conv{block}_{i}`` / ``features.bn{block}_{i}`` and
    ``classifier.fc{j}`` / ``classifier.bn{j}``.

    Args:
        version: ``"C"`` (default), ``"D"`` or ``"like"``.
        num_classes: number of logits. Default 10.
        in_channels, input_size: shape of one input image. Default ``(3, 32, 32)``; ``input_size``
            must be at least 32 (five poolings).

    >>> VGG("C").features.conv3_3.kernel_size
    (1, 1)
    """

    def __init__(
        self,
        version: Literal["C", "D", "like"] = "C",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        check_choice("version", version, tuple(_VGG_CONFIGS))
        check_int("num_classes", num_classes, minimum=1)
        self.input_shape = input_shape_of(in_channels, input_size, None)
        if input_size < 32:
            raise ValueError(
                f"`input_size` must be at least 32 for VGG (five 2x2 poolings), got {input_size}; "
                "resize the inputs (e.g. DigitsDataModule(resize_to=32))"
            )
        self.version = version
        self.num_classes = num_classes

        features: OrderedDict[str, nn.Module] = OrderedDict()
        channels, block, index = in_channels, 1, 1
        for item in _VGG_CONFIGS[version]:
            if item == "M":
                features[f"pool{block}"] = nn.MaxPool2d(2)
                block, index = block + 1, 1
                continue
            kernel, out = item
            features[f"conv{block}_{index}"] = nn.Conv2d(channels, out, kernel, padding=kernel // 2, bias=False)
            features[f"bn{block}_{index}"] = nn.BatchNorm2d(out)
            features[f"relu{block}_{index}"] = nn.ReLU(inplace=True)
            channels, index = out, index + 1
        self.features = nn.Sequential(features)

        classifier: OrderedDict[str, nn.Module] = OrderedDict()
        width = channels * (input_size // 32) ** 2
        j = 1
        for hidden in _VGG_HIDDEN[version]:
            classifier[f"fc{j}"] = nn.Linear(width, hidden, bias=False)
            classifier[f"bn{j}"] = nn.BatchNorm1d(hidden)
            classifier[f"relu{j}"] = nn.ReLU(inplace=True)
            width, j = hidden, j + 1
        classifier[f"fc{j}"] = nn.Linear(width, num_classes)
        self.classifier = nn.Sequential(classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        return self.classifier(self.features(x).flatten(1))

