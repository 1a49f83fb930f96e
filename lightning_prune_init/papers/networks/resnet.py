"""ResNet v1 for CIFAR (He et al. 2016, §4.2) with option-A zero-pad shortcuts, as SPP and SNIP use it.

>>> net = CifarResNet(depth=20, in_channels=1, input_size=28)
>>> net(torch.randn(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init._validation import check_choice, check_int
from lightning_prune_init.papers.networks.shapes import input_shape_of

__all__ = ["BasicBlock", "CifarResNet", "ZeroPadShortcut"]


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut of He et al. (2016): subsample by ``stride``, pad channels with zeros.

    ``[N, in_channels, H, W]`` -> ``[N, out_channels, ceil(H/stride), ceil(W/stride)]``; the input
    channels land in the middle (``(out-in)//2`` zero channels before, the rest after). No parameters.
    (SPP's TensorFlow code subsamples with a 2x2 average pool and appends the zeros after; the
    parameter count is the same.)

    >>> ZeroPadShortcut(16, 32, stride=2)(torch.ones(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"`out_channels` ({out_channels}) must be >= `in_channels` ({in_channels})")
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """ResNet v1 basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    ``[N, in_channels, H, W]`` -> ``[N, out_channels, H/stride, W/stride]``. When the shape changes the
    shortcut is :class:`ZeroPadShortcut` (``shortcut="zero_pad"``, option A, no parameters) or a 1x1
    conv with batch norm (``shortcut="projection"``, option B); otherwise the identity.

    >>> BasicBlock(16, 32, stride=2)(torch.randn(2, 16, 8, 8)).shape
    torch.Size([2, 32, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: Literal["zero_pad", "projection"] = "zero_pad",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "zero_pad":
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet v1 for CIFAR (He et al. 2016, §4.2): depth ``6n+2``, stages of 16, 32, 64 channels.

    conv3x3(16)-BN-ReLU, three stages of ``n`` :class:`BasicBlock` (the first block of stages 2 and 3
    has stride 2), global average pooling, linear to ``num_classes``. Input
    ``[N, in_channels, input_size, input_size]`` (any size >= 4: the pooling is global), output
    ``[N, num_classes]``.

    Weights with zero-pad shortcuts (option A), 3 input channels, 10 classes:
    ``27*16 + 2n*(9*16*16) + 9*16*32 + (2n-1)*(9*32*32) + 9*32*64 + (2n-1)*(9*64*64) + 64*10``.

    =========== ========= ========================= ===========
    network     weights   BN params + fc bias       parameters
    =========== ========= ========================= ===========
    ResNet-20   268,336   1,376 + 10                269,722
    ResNet-32   461,872   2,272 + 10                464,154 (the "0.46M" of He et al.)
    ResNet-56   848,944   4,064 + 10                853,018
    ResNet-110  1,719,856 8,096 + 10                1,727,962
    =========== ========= ========================= ===========

    ``shortcut="projection"`` adds two 1x1 convs (``16*32 + 32*64 = 2,560`` weights) and their batch
    norms (``2*(32+64) = 192``): ResNet-32 then has 464,432 weights and 466,906 parameters.

    Convs have no bias (each is followed by batch norm). Modules: ``conv1``, ``bn1``,
    ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,shortcut}``, ``fc``.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...). Default 32.
        num_classes: number of logits. Default 10.
        in_channels, input_size: shape of one input image. Default ``(3, 32, 32)``.
        shortcut: ``"zero_pad"`` (option A, default, as the papers) or ``"projection"`` (option B,
            1x1 conv + BN where the shape changes).
        base_width: channels of the first stage (doubled at each stage). Default 16.

    >>> sum(p.numel() for p in CifarResNet(depth=32).parameters())
    464154
    """

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        shortcut: Literal["zero_pad", "projection"] = "zero_pad",
        base_width: int = 16,
    ) -> None:
        super().__init__()
        for name, value in [("depth", depth), ("num_classes", num_classes), ("base_width", base_width)]:
            check_int(name, value, minimum=1)
        self.input_shape = input_shape_of(in_channels, input_size, None)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"`depth` must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        check_choice("shortcut", shortcut, ("zero_pad", "projection"))
        if input_size < 4:
            raise ValueError(f"`input_size` must be at least 4 for CifarResNet, got {input_size}")
        n = (depth - 2) // 6
        self.depth = depth
        self.shortcut_type = shortcut
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, base_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        channels = base_width
        for stage in range(3):
            out = base_width * 2**stage
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out, stride, shortcut))
                channels = out
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

