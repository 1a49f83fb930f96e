"""The networks of the papers (SPP and SNIP, see ``docs/method.md``) and MNIST-1D's 1-D CNN.

Every network is a plain :class:`torch.nn.Module` mapping ``[N, *input_shape]`` (float32) to logits
``[N, num_classes]``, and carries two attributes the rest of the package relies on:

- ``num_classes``: the number of logits;
- ``input_shape``: the shape of one input it was built for (noise batches for data-free pruning and
  ``example_input_array`` are shaped from it).

Counting convention: the papers count **weights**, the ``weight`` tensors of conv and linear layers
(:func:`count_weights`). Biases and batch-norm affine parameters are stated separately in each docstring.
Convolutions and linear layers followed by batch norm have no bias here (a bias before batch norm is
cancelled by its mean subtraction); the official TensorFlow code keeps those biases, initialised at zero.
All counts are for 10 classes. Weights are left at PyTorch's default initialisation; the pruning callback
re-initialises them with the scheme it is given (e.g. orthogonal).

Files: ``mlp.py`` (MLP-K), ``lenet.py`` (LeNet-300-100, LeNet-5-Caffe), ``vgg.py``, ``resnet.py``,
``conv1d.py`` (MNIST-1D's CNN), ``registry.py`` (by name), ``counting.py`` (the papers' weight count),
``shapes.py`` (input shapes).

>>> count_weights(build_network("lenet300"))
266200
"""

from lightning_prune_init.papers.networks.conv1d import ConvNet1D
from lightning_prune_init.papers.networks.counting import count_weights
from lightning_prune_init.papers.networks.lenet import LeNet5, LeNet300
from lightning_prune_init.papers.networks.mlp import MLP
from lightning_prune_init.papers.networks.registry import NETWORKS, build_network
from lightning_prune_init.papers.networks.resnet import BasicBlock, CifarResNet, ZeroPadShortcut
from lightning_prune_init.papers.networks.vgg import VGG

__all__ = [
    "MLP",
    "NETWORKS",
    "VGG",
    "BasicBlock",
    "CifarResNet",
    "ConvNet1D",
    "LeNet300",
    "LeNet5",
    "ZeroPadShortcut",
    "build_network",
    "count_weights",
]
