"""Networks by name, for YAML configs and the experiments: :data:`NETWORKS` and :func:`build_network`.

Names: ``mlp``, ``lenet300``, ``lenet5``, ``vgg_c``, ``vgg_d``, ``vgg_like``, ``resnet20``, ``resnet32``,
``resnet56``, ``resnet110``, ``resnet32_projection``, ``resnet`` (any depth ``6n+2``), ``conv1d`` (MNIST-1D's
CNN). Dashes are accepted for underscores (``vgg-c``), and case is ignored.

>>> build_network("mlp", depth=7, activation="linear").depth
7
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from lightning_prune_init._validation import check_choice
from lightning_prune_init.papers.networks.conv1d import ConvNet1D
from lightning_prune_init.papers.networks.lenet import LeNet5, LeNet300
from lightning_prune_init.papers.networks.mlp import MLP
from lightning_prune_init.papers.networks.resnet import CifarResNet
from lightning_prune_init.papers.networks.vgg import VGG

__all__ = ["NETWORKS", "build_network"]

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
    "conv1d": ConvNet1D,
}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build a network of :data:`NETWORKS` by name (case-insensitive, ``-`` read as ``_``).

    ``kwargs`` go to the constructor, e.g. ``build_network("mlp", depth=7, activation="linear")``,
    ``build_network("lenet5", in_channels=3, input_size=32)``, ``build_network("lenet300", input_shape=(1, 40))``.

    Raises:
        TypeError: ``name`` is not a string, or the constructor refuses ``kwargs`` (the message names the network).
        ValueError: an unknown name (the message lists the known ones).

    >>> type(build_network("VGG-like")).__name__
    'VGG'
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a network name (str), got {type(name).__name__}")
    key = check_choice("name", name.strip().lower().replace("-", "_"), sorted(NETWORKS))
    try:
        return NETWORKS[key](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for network {name!r}: {err}") from err
