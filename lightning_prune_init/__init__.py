"""lightning-prune-init: prune at initialization for PyTorch Lightning.

Connection sensitivity (SNIP) measured under isometric initialization, a data-free isometry repair, label-
and data-free pruning, masks that survive training, resume and DDP, and signal-propagation monitoring
(Lee et al., "A Signal Propagation Perspective for Pruning Neural Networks at Initialization", ICLR 2020).
"""

from lightning_prune_init.ablations import random_masks_like, reinitialize_kept_, shuffle_masks
from lightning_prune_init.callbacks import IsometryRepair, PruneAtInitCallback, SignalPropagationMonitor
from lightning_prune_init.data import CIFAR10DataModule, DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from lightning_prune_init.init import delta_orthogonal_, init_model_, orthogonal_, variance_scaling_
from lightning_prune_init.isometry import (
    IsometryReport,
    LayerIsometry,
    approximate_isometry,
    best_possible_error,
    orthogonality_error,
    orthogonality_errors,
)
from lightning_prune_init.masks import (
    apply_masks,
    enforce_masks_,
    get_masks,
    pack_masks,
    remove_masks,
    sparsity_report,
    to_torch_prune,
    unpack_masks,
)
from lightning_prune_init.models import ImageClassifier, build_network, count_weights
from lightning_prune_init.parameters import prunable_parameters
from lightning_prune_init.scoring import (
    CRITERIA,
    connection_sensitivity,
    criterion_masks,
    get_criterion,
    noise_batches,
    register_criterion,
)
from lightning_prune_init.spectrum import SpectrumStats, conv_singular_values_fft, jacobian_singular_values
from lightning_prune_init.selection import (
    LayerCollapseError,
    LayerCollapseWarning,
    check_masks,
    find_collapse,
    select_masks,
)

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "check_masks",
    "criterion_masks",
    "find_collapse",
    "get_criterion",
    "random_masks_like",
    "register_criterion",
    "reinitialize_kept_",
    "shuffle_masks",
    "SignalPropagationMonitor",
    "SpectrumStats",
    "conv_singular_values_fft",
    "jacobian_singular_values",
    "IsometryReport",
    "IsometryRepair",
    "LayerIsometry",
    "approximate_isometry",
    "best_possible_error",
    "delta_orthogonal_",
    "init_model_",
    "orthogonal_",
    "orthogonality_error",
    "orthogonality_errors",
    "variance_scaling_",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageClassifier",
    "MNISTDataModule",
    "build_network",
    "count_weights",
    "LayerCollapseError",
    "LayerCollapseWarning",
    "PruneAtInitCallback",
    "apply_masks",
    "connection_sensitivity",
    "enforce_masks_",
    "get_masks",
    "noise_batches",
    "pack_masks",
    "prunable_parameters",
    "remove_masks",
    "select_masks",
    "sparsity_report",
    "to_torch_prune",
    "unpack_masks",
]
