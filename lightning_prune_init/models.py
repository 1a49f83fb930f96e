"""The networks of the papers (METHOD.md §6) and a generic image-classification LightningModule.

Every network is a plain :class:`torch.nn.Module` that maps images ``[N, C, H, W]`` (float32) to
logits ``[N, num_classes]``, and carries two attributes the rest of the package relies on:

- ``num_classes``: the number of logits;
- ``input_shape``: the ``(C, H, W)`` of one input image it was built for (noise batches for
  data-free pruning and ``example_input_array`` are shaped from it).

Counting convention: the papers count **weights**, i.e. the ``weight`` tensors of conv and linear
layers (:func:`count_weights`). Biases and batch-norm affine parameters are stated separately in each
docstring. Convolutions and linear layers followed by batch norm have no bias here (a bias before
batch norm is cancelled by its mean subtraction); the official TensorFlow code keeps those biases,
initialised at zero. All counts below are for 10 classes.

Weights are left at PyTorch's default initialisation; the pruning callback re-initialises them with
the scheme it is given (e.g. orthogonal).

Networks by name (:func:`build_network`, for YAML): ``mlp``, ``lenet300``, ``lenet5``, ``vgg_c``,
``vgg_d``, ``vgg_like``, ``resnet20``, ``resnet32``, ``resnet56``, ``resnet110``,
``resnet32_projection``, ``resnet`` (any depth ``6n+2``). Dashes are accepted for underscores
(``vgg-c``).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = [
    "MLP",
    "LeNet300",
    "LeNet5",
    "VGG",
    "CifarResNet",
    "BasicBlock",
    "ZeroPadShortcut",
    "NETWORKS",
    "build_network",
    "count_weights",
    "ImageClassifier",
]


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value}")
    return value


def count_weights(module: nn.Module) -> int:
    """Number of scalars in the ``weight`` of every conv and linear layer of ``module``.

    This is the count the papers report ("weights"): biases, batch-norm parameters and buffers are
    not included. Use ``sum(p.numel() for p in module.parameters())`` for all parameters.
    """
    return sum(
        m.weight.numel()
        for m in module.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.weight is not None
    )


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


class MLP(nn.Module):
    """MLP-K of SPP: ``depth`` linear layers, hidden width ``width``, one activation between layers.

    Input ``[N, in_channels, input_size, input_size]`` (flattened) or already flat
    ``[N, in_channels * input_size**2]``; output logits ``[N, num_classes]``. The activation follows
    every layer but the last.

    Weights (``d = in_channels * input_size**2``, 784 by default; ``w = width``):
    ``d*w + (depth-2)*w*w + w*num_classes`` for ``depth >= 2`` (``d*num_classes`` for ``depth=1``).
    With the defaults: MLP-3 89,400; MLP-5 109,400; MLP-7 129,400 weights. Biases (if ``bias``):
    ``(depth-1)*w + num_classes`` more (210, 410, 610).

    Args:
        depth: K, the number of weight (linear) layers, >= 1. Default 3.
        width: hidden units per hidden layer. Default 100.
        activation: ``"linear"`` (identity), ``"tanh"`` or ``"relu"``. Default ``"tanh"``.
        num_classes: number of logits. Default 10.
        in_channels, input_size: shape of one input image, ``(in_channels, input_size, input_size)``.
            Default ``(1, 28, 28)``.
        bias: whether the linear layers have biases. Default True.

    Layers are named ``fc1`` ... ``fc{depth}``.
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
    ) -> None:
        super().__init__()
        for value, name in [(depth, "depth"), (width, "width"), (num_classes, "num_classes"),
                            (in_channels, "in_channels"), (input_size, "input_size")]:
            _check_positive_int(value, name)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.depth = depth
        self.width = width
        self.activation = activation
        self.num_classes = num_classes
        self.input_shape = (in_channels, input_size, input_size)
        sizes = [in_channels * input_size * input_size] + [width] * (depth - 1) + [num_classes]
        self.layer_names: list[str] = []
        for i in range(depth):
            name = f"fc{i + 1}"
            self.add_module(name, nn.Linear(sizes[i], sizes[i + 1], bias=bias))
            self.layer_names.append(name)
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` or ``[N, C*H*W]`` -> logits ``[N, num_classes]``."""
        x = x.flatten(1)
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i < self.depth - 1:
                x = self.act(x)
        return x


class LeNet300(nn.Module):
    """LeNet-300-100: linear 784-300-100-10 with ReLU (SNIP's ``lenet300``).

    Input ``[N, in_channels, input_size, input_size]``, output ``[N, num_classes]``.
    Weights: ``784*300 + 300*100 + 100*10 = 266,200`` (for 1x28x28 and 10 classes).
    Biases: ``300 + 100 + 10 = 410``; 266,610 parameters in all. Layers ``fc1``, ``fc2``, ``fc3``.

    Args:
        num_classes: number of logits. Default 10.
        in_channels, input_size: shape of one input image. Default ``(1, 28, 28)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        for value, name in [(num_classes, "num_classes"), (in_channels, "in_channels"), (input_size, "input_size")]:
            _check_positive_int(value, name)
        self.num_classes = num_classes
        self.input_shape = (in_channels, input_size, input_size)
        self.fc1 = nn.Linear(in_channels * input_size * input_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
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
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        for value, name in [(num_classes, "num_classes"), (in_channels, "in_channels"), (input_size, "input_size")]:
            _check_positive_int(value, name)
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"`input_size` must be at least 16 for LeNet5, got {input_size}")
        self.num_classes = num_classes
        self.input_shape = (in_channels, input_size, input_size)
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
    """

    def __init__(
        self,
        version: Literal["C", "D", "like"] = "C",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if version not in _VGG_CONFIGS:
            raise ValueError(f"`version` must be one of {sorted(_VGG_CONFIGS)}, got {version!r}")
        for value, name in [(num_classes, "num_classes"), (in_channels, "in_channels"), (input_size, "input_size")]:
            _check_positive_int(value, name)
        if input_size < 32:
            raise ValueError(
                f"`input_size` must be at least 32 for VGG (five 2x2 poolings), got {input_size}; "
                "resize the inputs (e.g. DigitsDataModule(resize_to=32))"
            )
        self.version = version
        self.num_classes = num_classes
        self.input_shape = (in_channels, input_size, input_size)

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


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut of He et al. (2016): subsample by ``stride``, pad channels with zeros.

    ``[N, in_channels, H, W]`` -> ``[N, out_channels, ceil(H/stride), ceil(W/stride)]``; the input
    channels land in the middle (``(out-in)//2`` zero channels before, the rest after). No parameters.
    (SPP's TensorFlow code subsamples with a 2x2 average pool and appends the zeros after; the
    parameter count is the same.)
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
        for value, name in [(depth, "depth"), (num_classes, "num_classes"), (in_channels, "in_channels"),
                            (input_size, "input_size"), (base_width, "base_width")]:
            _check_positive_int(value, name)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"`depth` must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        if shortcut not in ("zero_pad", "projection"):
            raise ValueError(f"`shortcut` must be 'zero_pad' or 'projection', got {shortcut!r}")
        if input_size < 4:
            raise ValueError(f"`input_size` must be at least 4 for CifarResNet, got {input_size}")
        n = (depth - 2) // 6
        self.depth = depth
        self.shortcut_type = shortcut
        self.num_classes = num_classes
        self.input_shape = (in_channels, input_size, input_size)
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


#: Network constructors by name, for :func:`build_network` and YAML configs.
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "vgg_c": functools.partial(VGG, version="C"),
    "vgg_d": functools.partial(VGG, version="D"),
    "vgg_like": functools.partial(VGG, version="like"),
    "resnet": CifarResNet,
    "resnet20": functools.partial(CifarResNet, depth=20),
    "resnet32": functools.partial(CifarResNet, depth=32),
    "resnet56": functools.partial(CifarResNet, depth=56),
    "resnet110": functools.partial(CifarResNet, depth=110),
    "resnet32_projection": functools.partial(CifarResNet, depth=32, shortcut="projection"),
}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build a network of :data:`NETWORKS` by name (case-insensitive, ``-`` read as ``_``).

    ``kwargs`` go to the constructor, e.g. ``build_network("mlp", depth=7, activation="linear")``,
    ``build_network("lenet5", in_channels=3, input_size=32)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; `name` must be one of {sorted(NETWORKS)}")
    try:
        return NETWORKS[key](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for network {name!r}: {err}") from err


class ImageClassifier(L.LightningModule):
    """Image classification with any network: cross-entropy, SGD/Adam/AdamW, optional LR schedule.

    Batches are ``(images [N, C, H, W] float32, targets [N] int64)``. Logs ``train/loss`` (per
    step), ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` (per epoch); accuracy
    is top-1 over all samples (torchmetrics ``MulticlassAccuracy(average="micro")``).

    Args:
        network: a name of :data:`NETWORKS` (default ``"lenet300"``) or a ready ``nn.Module``. A module
            is not stored in the hyperparameters: pass it again to ``load_from_checkpoint``.
        network_kwargs: keyword arguments for :func:`build_network` when ``network`` is a name,
            e.g. ``{"depth": 7, "activation": "tanh"}``.
        num_classes: number of classes. ``None`` (default): the network's ``num_classes`` attribute,
            else 10. When given with a network name it is passed to the constructor.
        lr: learning rate. Default 0.1.
        momentum: SGD momentum (ignored by Adam/AdamW). Default 0.9.
        weight_decay: L2 penalty (decoupled for AdamW) on all parameters. Default 5e-4.
        optimizer: ``"sgd"`` (default), ``"adam"`` or ``"adamw"``.
        scheduler: ``"none"`` (default), ``"step"`` (multiply by ``lr_gamma`` every ``lr_step_size``
            intervals) or ``"cosine"`` (cosine annealing to 0 over the whole run:
            ``trainer.estimated_stepping_batches`` steps or ``trainer.max_epochs`` epochs).
        lr_step_size: period of the step schedule, in ``scheduler_interval`` units. Default 30.
        lr_gamma: factor of the step schedule. Default 0.1.
        scheduler_interval: ``"epoch"`` (default) or ``"step"`` (SNIP decays every 25k/30k steps).
    """

    def __init__(
        self,
        network: str | nn.Module = "lenet300",
        network_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        scheduler: Literal["none", "step", "cosine"] = "none",
        lr_step_size: int = 30,
        lr_gamma: float = 0.1,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"`optimizer` must be 'sgd', 'adam' or 'adamw', got {optimizer!r}")
        if scheduler not in ("none", "step", "cosine"):
            raise ValueError(f"`scheduler` must be 'none', 'step' or 'cosine', got {scheduler!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"`scheduler_interval` must be 'epoch' or 'step', got {scheduler_interval!r}")
        if not lr > 0:
            raise ValueError(f"`lr` must be > 0, got {lr}")
        if weight_decay < 0 or momentum < 0:
            raise ValueError(f"`weight_decay` and `momentum` must be >= 0, got {weight_decay}, {momentum}")
        _check_positive_int(lr_step_size, "lr_step_size")

        if isinstance(network, nn.Module):
            if network_kwargs:
                raise ValueError("`network_kwargs` is only used when `network` is a name, not a module")
            self.save_hyperparameters(ignore=["network"])
            self.network = network
        elif isinstance(network, str):
            self.save_hyperparameters()
            kwargs = dict(network_kwargs or {})
            if num_classes is not None:
                if kwargs.get("num_classes", num_classes) != num_classes:
                    raise ValueError(
                        f"`num_classes` ({num_classes}) disagrees with network_kwargs['num_classes'] "
                        f"({kwargs['num_classes']})"
                    )
                kwargs["num_classes"] = num_classes
            self.network = build_network(network, **kwargs)
        else:
            raise TypeError(f"`network` must be a network name or an nn.Module, got {type(network).__name__}")

        net_classes = getattr(self.network, "num_classes", None)
        if num_classes is None:
            num_classes = int(net_classes) if net_classes is not None else 10
        elif net_classes is not None and net_classes != num_classes:
            raise ValueError(f"`num_classes` ({num_classes}) disagrees with the network's ({net_classes})")
        _check_positive_int(num_classes, "num_classes")
        self.num_classes = num_classes

        input_shape = getattr(self.network, "input_shape", None)
        if input_shape is not None:
            # Two samples, so that batch norm in training mode also accepts it.
            self.example_input_array = torch.zeros(2, *input_shape)

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        return self.network(x)

    def _shared_step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        # One key per quantity: the training loss per step, everything else per epoch.
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=not train)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = self.parameters()
        opt: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        sched: torch.optim.lr_scheduler.LRScheduler
        if hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_step_size, gamma=hp.lr_gamma)
        else:
            if hp.scheduler_interval == "step":
                total = self.trainer.estimated_stepping_batches
            else:
                total = self.trainer.max_epochs
            if total is None or not math.isfinite(total) or total < 1:
                raise ValueError(
                    f"scheduler='cosine' needs a finite run length; got {total} "
                    f"{'steps' if hp.scheduler_interval == 'step' else 'epochs'} (set max_epochs or max_steps)"
                )
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.scheduler_interval}}
