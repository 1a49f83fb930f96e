"""The count the papers report: scalars in the ``weight`` of conv and linear layers ("weights").

>>> import torch
>>> count_weights(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Conv1d(1, 2, 5)))
22
"""

from __future__ import annotations

from torch import nn

__all__ = ["count_weights"]


def count_weights(module: nn.Module) -> int:
    """Number of scalars in the ``weight`` of every conv and linear layer of ``module``.

    ``sum(m.weight.numel())`` over the ``nn.Linear`` and ``nn.Conv1d/2d/3d`` submodules: biases, batch-norm
    parameters and buffers are not included. Use ``sum(p.numel() for p in module.parameters())`` for all
    parameters.

    >>> from lightning_prune_init.papers import LeNet300
    >>> count_weights(LeNet300())  # 784*300 + 300*100 + 100*10
    266200
    """
    return sum(
        m.weight.numel()
        for m in module.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.weight is not None
    )
