"""Sparse execution: masked layers computed by sparse kernels, trained on their kept values only.

* :mod:`~lightning_prune_init.sparse.api`: :func:`enable_sparse_execution`, :func:`disable_sparse_execution`;
* :mod:`~lightning_prune_init.sparse.linear`: :class:`SparseLinear`, the switched ``nn.Linear``;
* :mod:`~lightning_prune_init.sparse.eligibility`: which layers can run sparse, on which kernel;
* :mod:`~lightning_prune_init.sparse.kernels`: the forward and backward on CSR structures;
* :mod:`~lightning_prune_init.sparse.semi_structured`: 2:4 masks on NVIDIA GPUs (inference);
* :mod:`~lightning_prune_init.sparse.structure`: the CSR structure of ``W`` and ``Wᵀ``, built once;
* :mod:`~lightning_prune_init.sparse.timing`: how ``"auto"`` measures a layer;
* :mod:`~lightning_prune_init.sparse.report`: what was decided, per layer.

>>> import torch
>>> net = torch.nn.Linear(16, 4)
>>> report = enable_sparse_execution(net, "on", masks={"weight": torch.rand(4, 16) < 0.1})
>>> report.switched
['weight']
"""

from lightning_prune_init.sparse.api import disable_sparse_execution, enable_sparse_execution
from lightning_prune_init.sparse.eligibility import SPARSE_TYPES, kernel_for, sparse_modules
from lightning_prune_init.sparse.linear import SparseLinear, densify_linear_, sparsify_linear_
from lightning_prune_init.sparse.report import LayerDecision, SparseExecutionReport
from lightning_prune_init.sparse.semi_structured import SemiStructuredLinear, semi_structured_unsupported
from lightning_prune_init.sparse.structure import CsrStructure
from lightning_prune_init.sparse.timing import LayerTiming, time_layer

__all__ = [
    "SPARSE_TYPES",
    "CsrStructure",
    "LayerDecision",
    "LayerTiming",
    "SparseExecutionReport",
    "SemiStructuredLinear",
    "SparseLinear",
    "densify_linear_",
    "disable_sparse_execution",
    "enable_sparse_execution",
    "kernel_for",
    "sparse_modules",
    "semi_structured_unsupported",
    "sparsify_linear_",
    "time_layer",
]
