"""Which layers can run sparse, and on which kernel; and which layers of a model run sparse now.

A masked weight runs sparse when its module is ``nn.Linear`` itself (a subclass may compute otherwise, and
``MultiheadAttention``'s ``out_proj`` is read by its parent), the tensor is the ``weight`` and is not tied to another
module, and a kernel takes it:

* ``"csr"`` (:mod:`~lightning_prune_init.sparse.kernels`): float32/float64 weights on CPU or CUDA, training and
  inference;
* ``"2:4"`` (:mod:`~lightning_prune_init.sparse.semi_structured`): float16/bfloat16 weights on a CUDA GPU of
  compute capability >= 8.0 under a 2:4 mask, inference only.

Convolutions and transformers ``Conv1D`` weights stay dense and are reported so: on CPU, im2col + CSR was measured
slower than the dense kernels at every size tried (docs/sparse.md).

>>> import torch
>>> kernel_for(torch.nn.Linear(4, 4), "weight", torch.ones(4, 4, dtype=torch.bool))
('csr', 'eligible')
>>> kernel_for(torch.nn.Conv2d(1, 1, 3), "weight", None)[1][:35]
'Conv2d: no sparse path measured fas'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import Tensor, nn

from lightning_prune_init.layouts import CONV_TYPES, hf_conv1d_type
from lightning_prune_init.sparse.linear import SparseLinear
from lightning_prune_init.sparse.semi_structured import SemiStructuredLinear, semi_structured_unsupported

__all__ = ["SPARSE_TYPES", "candidates", "kernel_for", "sparse_modules"]

#: The module classes of layers in sparse execution.
SPARSE_TYPES = (SparseLinear, SemiStructuredLinear)
_CSR_DTYPES = (torch.float32, torch.float64)


def sparse_modules(model: nn.Module) -> dict[str, Union[SparseLinear, SemiStructuredLinear]]:
    """``{parameter name of the dense weight: module}`` for every layer of ``model`` in sparse execution.

    >>> sparse_modules(torch.nn.Linear(2, 2))
    {}
    """
    return {f"{p}.weight" if p else "weight": m for p, m in model.named_modules() if isinstance(m, SPARSE_TYPES)}


def kernel_for(
    module: nn.Module, attr: str, mask: Optional[Tensor], *, tied: bool = False, workload: str = "train"
) -> tuple[Optional[str], str]:
    """``(kernel, reason)``: the kernel that runs ``module.<attr>`` under ``mask`` (``None``: it stays dense, and
    ``reason`` says why).

    >>> kernel_for(torch.nn.Linear(2, 2).double(), "weight", torch.ones(2, 2, dtype=torch.bool))
    ('csr', 'eligible')
    >>> kernel_for(torch.nn.Linear(2, 2), "bias", torch.ones(2, dtype=torch.bool))
    (None, 'not the weight matrix (only nn.Linear weights run sparse)')
    """
    kind = type(module).__name__
    if isinstance(module, SparseLinear):
        return "csr", "already in sparse execution"
    if isinstance(module, SemiStructuredLinear):
        return "2:4", "already in sparse execution"
    conv1d = hf_conv1d_type()
    if isinstance(module, CONV_TYPES) or (conv1d is not None and isinstance(module, conv1d)):
        return None, f"{kind}: no sparse path measured faster on CPU (docs/sparse.md); left dense"
    if not isinstance(module, nn.Linear):
        return None, f"{kind}: only nn.Linear weights run sparse"
    if type(module) is not nn.Linear:
        return None, f"{kind} subclasses nn.Linear (it may compute or be read otherwise); only nn.Linear is switched"
    if attr != "weight":
        return None, "not the weight matrix (only nn.Linear weights run sparse)"
    if mask is None:
        return None, "no mask"
    if tied:
        return None, "shared with another module (tied weights stay dense)"
    weight = module.weight
    if weight.device.type not in ("cpu", "cuda"):
        return None, f"device {weight.device.type}: the sparse kernels run on CPU and CUDA"
    if weight.dtype in _CSR_DTYPES:
        return "csr", "eligible"
    if workload != "inference":
        return None, f"dtype {weight.dtype}: the CSR kernels take float32/float64 (2:4 kernels: workload='inference')"
    reason = semi_structured_unsupported(module, mask)
    return (None, reason) if reason else ("2:4", "eligible")


def candidates(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, tuple[nn.Module, str]]:
    """Every masked tensor, and every Linear/conv weight without a mask, with its owning module and attribute.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    >>> {name: attr for name, (_, attr) in candidates(net, {"1.weight": torch.ones(2, dtype=torch.bool)}).items()}
    {'0.weight': 'weight', '1.weight': 'weight'}
    """
    conv1d = hf_conv1d_type()
    kinds = (nn.Linear, *CONV_TYPES, *((conv1d,) if conv1d is not None else ()))
    found = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        attrs = [n for n, _ in module.named_parameters(recurse=False)]
        if isinstance(module, SPARSE_TYPES):
            attrs = ["weight", *attrs]
        for attr in attrs:
            name = prefix + attr
            if name in masks or (attr == "weight" and isinstance(module, kinds)):
                found[name] = (module, attr)
    return found
