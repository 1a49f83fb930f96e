"""2:4 masks on NVIDIA GPUs: inference through PyTorch's semi-structured sparse kernels.

A mask keeping 2 of every 4 consecutive inputs (``select_masks(..., pattern="2:4")``) is what the sparse tensor
cores of Ampere and later GPUs run: :func:`torch.sparse.to_sparse_semi_structured` packs the kept half of the
weight with its metadata, and ``F.linear`` dispatches to cuSPARSELt / CUTLASS. :class:`SemiStructuredLinear`
is an ``nn.Linear`` switched in place to that form, for inference (``enable_sparse_execution(...,
workload="inference")``): the packed weight is not a Parameter (no gradient), the ``state_dict`` keeps the plain
dense ``weight`` key, and ``pruning_masks()`` reports the mask.

Requirements (checked by :func:`semi_structured_unsupported`, which names the first one not met): a CUDA device
of compute capability >= 8.0, float16 or bfloat16 weights, a 2:4 mask along the input dimension, and a weight of
at least 32 × 64 with rows a multiple of 32 and inputs a multiple of 64. Training on GPU uses the CSR path
(float32) instead. No GPU was lent to the session that wrote this: ``tests/test_sparse_cuda.py`` runs it where
there is one.

>>> import torch
>>> semi_structured_unsupported(torch.nn.Linear(64, 32), torch.ones(32, 64, dtype=torch.bool))
'2:4 semi-structured kernels run on CUDA only'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune_init._torch_internals import insert_parameter_first_, remove_parameter_
from lightning_prune_init.selection.patterns import is_n_m

__all__ = ["SemiStructuredLinear", "from_semi_structured_", "semi_structured_unsupported", "to_semi_structured_"]

_PACKED, _MASK = "_semi_structured_weight", "_semi_structured_mask"
_MIN_ROWS, _MIN_COLS = 32, 64  # the stricter (CUTLASS) float16/bfloat16 constraints of torch.sparse


def semi_structured_unsupported(module: nn.Linear, mask: Tensor) -> Optional[str]:
    """Why ``module`` cannot run its ``mask`` with the 2:4 kernels (``None``: it can).

    >>> semi_structured_unsupported(torch.nn.Linear(64, 32), torch.zeros(32, 64, dtype=torch.bool))
    '2:4 semi-structured kernels run on CUDA only'
    """
    weight = module.weight
    if weight.device.type != "cuda":
        return "2:4 semi-structured kernels run on CUDA only"
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return "2:4 semi-structured kernels need a GPU of compute capability >= 8.0"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return f"2:4 semi-structured kernels take float16/bfloat16 weights, not {weight.dtype}"
    if not is_n_m(mask, "2:4"):
        return "the mask is not 2:4 along the inputs (select_masks(..., pattern='2:4'))"
    rows, cols = weight.shape
    if rows % _MIN_ROWS or cols % _MIN_COLS:
        return f"2:4 semi-structured kernels need rows a multiple of {_MIN_ROWS} and inputs of {_MIN_COLS}, not {rows}×{cols}"
    return None


class SemiStructuredLinear(nn.Linear):
    """An ``nn.Linear`` computing with a 2:4 semi-structured weight, for inference (see the module docstring).

    Built by :func:`to_semi_structured_` on a CUDA layer (``tests/test_sparse_cuda.py``):

    >>> layer = to_semi_structured_(torch.nn.Linear(64, 32).half().cuda(), mask)  # doctest: +SKIP
    >>> layer(torch.randn(8, 64).half().cuda()).shape  # doctest: +SKIP
    torch.Size([8, 32])
    """

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The dense weight (a new tensor; zeros at pruned entries)."""
        return self.__dict__[_PACKED].to_dense()

    @weight.setter
    def weight(self, value: Any) -> None:
        raise AttributeError("the `weight` of a 2:4 semi-structured layer is read-only: disable_sparse_execution first")

    def pruning_masks(self) -> dict[str, Tensor]:
        """``{"weight": bool mask}`` (``True`` = kept)."""
        return {"weight": self.__dict__[_MASK].clone()}

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.__dict__[_PACKED], self.bias)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> SemiStructuredLinear:
        dense, mask = fn(self.weight), fn(self.__dict__[_MASK]).to(torch.bool)
        if dense.device.type != "cuda" or dense.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                f"a 2:4 semi-structured layer stays on CUDA in float16/bfloat16 (asked: {dense.device.type}, "
                f"{dense.dtype}): call disable_sparse_execution(model) first"
            )
        super()._apply(fn, recurse)
        self.__dict__[_MASK], self.__dict__[_PACKED] = mask, _pack(dense, mask)
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        dense = state_dict.pop(prefix + "weight", None)
        if dense is not None:
            packed, mask = self.__dict__[_PACKED], self.__dict__[_MASK]
            self.__dict__[_PACKED] = _pack(dense.to(mask.device, packed.dtype), mask)
        super()._load_from_state_dict(state_dict, prefix, *args)


def _pack(dense: Tensor, mask: Tensor) -> Tensor:
    return torch.sparse.to_sparse_semi_structured((dense * mask).contiguous())


def to_semi_structured_(module: nn.Linear, mask: Tensor) -> SemiStructuredLinear:
    """Switch ``module`` in place to a :class:`SemiStructuredLinear` under a 2:4 ``mask``; returns it.

    Raises:
        ValueError: :func:`semi_structured_unsupported` names a requirement not met.

    >>> to_semi_structured_(torch.nn.Linear(64, 32), torch.ones(32, 64, dtype=torch.bool))
    Traceback (most recent call last):
    ...
    ValueError: cannot switch Linear to 2:4 semi-structured kernels: 2:4 semi-structured kernels run on CUDA only
    """
    reason = semi_structured_unsupported(module, mask)
    if reason is not None:
        raise ValueError(f"cannot switch {type(module).__name__} to 2:4 semi-structured kernels: {reason}")
    mask = mask.to(module.weight.device)
    packed = _pack(module.weight.detach(), mask)
    module.__class__ = SemiStructuredLinear
    module.__dict__[_PACKED], module.__dict__[_MASK] = packed, mask
    remove_parameter_(module, "weight")
    return module  # type: ignore[return-value]


def from_semi_structured_(module: SemiStructuredLinear) -> nn.Linear:
    """Switch a :class:`SemiStructuredLinear` back to a plain ``nn.Linear`` (dense weight Parameter).

    >>> from_semi_structured_(layer)  # doctest: +SKIP
    Linear(in_features=64, out_features=32, bias=True)
    """
    weight = nn.Parameter(module.weight, requires_grad=False)
    del module.__dict__[_PACKED], module.__dict__[_MASK]
    module.__class__ = nn.Linear
    insert_parameter_first_(module, "weight", weight)
    return module
