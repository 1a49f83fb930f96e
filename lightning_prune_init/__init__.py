"""lightning-prune-init: prune at initialization for PyTorch Lightning.

Connection sensitivity (SNIP) measured under isometric initialization, a data-free isometry repair, label- and
data-free pruning, masks that survive training, resume and DDP, sparse kernels that make the sparsity pay, and
signal-propagation monitoring (Lee et al., "A Signal Propagation Perspective for Pruning Neural Networks at
Initialization", ICLR 2020).

The public API is the two callbacks and the functional core they are built on; every other name lives in its
sub-package (``lightning_prune_init.init``, ``.masks``, ``.scoring``, ``.selection``, ``.spectrum``,
``.isometry``, ``.sparse``, ``.ablations``, ``.papers`` for the papers' networks and data). docs/guide.md is the
user guide.

>>> import torch
>>> from lightning_prune_init import apply_masks, connection_sensitivity, select_masks, sparsity_report
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
>>> batch = (torch.randn(32, 8), torch.randint(0, 3, (32,)))
>>> masks = select_masks(connection_sensitivity(net, [batch]), sparsity=0.75)
>>> sparsity_report(apply_masks(net, masks)).kept
44
"""

from lightning_prune_init.callbacks import PruneAtInitCallback, SignalPropagationMonitor
from lightning_prune_init.init import init_model_
from lightning_prune_init.isometry import approximate_isometry, orthogonality_error
from lightning_prune_init.masks import apply_masks, get_masks, remove_masks, sparsity_report
from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.scoring import CRITERIA, connection_sensitivity, get_criterion, register_criterion
from lightning_prune_init.selection import select_masks
from lightning_prune_init.sparse import disable_sparse_execution, enable_sparse_execution
from lightning_prune_init.spectrum import jacobian_singular_values

__version__ = "0.2.0"

__all__ = [
    "CRITERIA",
    "PruneAtInitCallback",
    "SignalPropagationMonitor",
    "apply_masks",
    "approximate_isometry",
    "connection_sensitivity",
    "disable_sparse_execution",
    "enable_sparse_execution",
    "get_criterion",
    "get_masks",
    "init_model_",
    "jacobian_singular_values",
    "orthogonality_error",
    "register_criterion",
    "remove_masks",
    "select_masks",
    "select_parameters",
    "sparsity_report",
]
