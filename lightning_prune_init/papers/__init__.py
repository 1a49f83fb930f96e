"""What the papers' experiments need besides pruning: their networks, data modules and a classifier module.

Not re-exported by the top-level package (these are the experiments' tools, not the pruning API); import
them from here: ``from lightning_prune_init.papers import ImageClassifier, DigitsDataModule, build_network``.
On the command line ``--model=ImageClassifier --data=DigitsDataModule`` resolve by short name, and in YAML
``class_path: lightning_prune_init.papers.ImageClassifier``.

- ``networks/``: MLP-K, LeNet-300-100, LeNet-5-Caffe, VGG-C/D/like, CIFAR ResNets, MNIST-1D's 1-D CNN,
  by name (:func:`build_network`) and the papers' weight count (:func:`count_weights`).
- ``data/``: the bundled digits and MNIST-1D (offline), MNIST, Fashion-MNIST and CIFAR-10 (torchvision).
- ``classifier.py``: :class:`ImageClassifier`, cross-entropy training of any network.

>>> model = ImageClassifier("conv1d")
>>> count_weights(model.network), model.example_input_array.shape
(5125, torch.Size([2, 1, 40]))
"""

from lightning_prune_init.papers.classifier import ImageClassifier
from lightning_prune_init.papers.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNIST1DDataModule,
    MNISTDataModule,
    load_mnist1d,
)
from lightning_prune_init.papers.networks import (
    MLP,
    NETWORKS,
    VGG,
    BasicBlock,
    CifarResNet,
    ConvNet1D,
    LeNet5,
    LeNet300,
    ZeroPadShortcut,
    build_network,
    count_weights,
)

__all__ = [
    "MLP",
    "NETWORKS",
    "VGG",
    "BasicBlock",
    "CIFAR10DataModule",
    "CifarResNet",
    "ConvNet1D",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageClassifier",
    "LeNet300",
    "LeNet5",
    "MNIST1DDataModule",
    "MNISTDataModule",
    "ZeroPadShortcut",
    "build_network",
    "count_weights",
    "load_mnist1d",
]
