"""How a weight reads as matrices: the orientation and grouping of each kind of layer.

Every stage that treats a weight as a linear map (initialization, the isometry repair, weight spectra,
N:M patterns) works on the weight's *matrices*: a stack ``[G, rows, cols]`` in which matrix ``g`` maps the
inputs of group ``g`` to its outputs (``rows`` output units; ``cols`` inputs times kernel taps).

====================================  ======================  =====  ====================================
layer                                 weight shape            G      one matrix
====================================  ======================  =====  ====================================
``nn.Linear``                         ``[out, in]``           1      ``[out, in]``
``nn.Conv1d/2d/3d``, ``groups=g``     ``[c_out, c_in/g, *k]``  g      ``[c_out/g, c_in/g · prod(k)]``
transformers ``Conv1D``               ``[in, out]``           1      ``[out, in]`` (the weight transposed)
``nn.MultiheadAttention`` in_proj     ``[3E, E]``             3      ``[E, E]`` (query, key, value)
any other tensor of >= 2 dims         ``[d0, *rest]``         1      ``[d0, prod(rest)]``
a tensor of < 2 dims (bias, gain)     ``[n]``                 -      none: it is not a linear map
====================================  ======================  =====  ====================================

>>> import torch
>>> conv = torch.nn.Conv2d(8, 16, 3, groups=4)
>>> layout = layout_of(conv, "weight")
>>> layout.kind, layout.groups, tuple(layout.matrices(conv.weight).shape)
('conv', 4, (4, 4, 18))
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["MatrixLayout", "hf_conv1d_type", "layout_of"]

LayoutKind = Literal["linear", "conv", "transposed", "blocks", "matrix", "vector"]

#: Convolution module types whose ``weight`` is ``[c_out, c_in / groups, *kernel]``.
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def hf_conv1d_type() -> type | None:
    """transformers' ``Conv1D`` class (weight stored ``[in, out]``) if transformers is imported, else ``None``.

    A model can only contain a ``Conv1D`` once transformers has been imported, so this never imports it.
    """
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


@dataclass(frozen=True)
class MatrixLayout:
    """How one tensor reads as a stack of ``groups`` matrices ``[groups, rows, cols]``.

    Attributes:
        kind: ``"linear"`` (``[out, in]``), ``"conv"`` (``[c_out, c_in/g, *kernel]``), ``"transposed"``
            (``[in, out]``, transformers' ``Conv1D``), ``"blocks"`` (``[G·out, in]`` read as ``G`` blocks of rows,
            e.g. attention's fused query/key/value projection), ``"matrix"`` (any other tensor of ``>= 2`` dims,
            ``[d0, prod(rest)]``) or ``"vector"`` (fewer than 2 dims: no matrix).
        groups: number of matrices ``G`` (conv groups; 3 for a fused q/k/v projection; else 1).
        kernel: the spatial kernel size of a conv weight, ``()`` otherwise.
    """

    kind: LayoutKind
    groups: int = 1
    kernel: tuple[int, ...] = ()

    @property
    def is_matrix(self) -> bool:
        """Whether the tensor is a linear map (every kind but ``"vector"``)."""
        return self.kind != "vector"

    def matrix_shape(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """``(groups, rows, cols)`` of the matrices of a tensor of ``shape``.

        Raises:
            ValueError: a ``"vector"`` layout, or a shape the layout's groups do not divide.
        """
        if not self.is_matrix:
            raise ValueError(f"a tensor of shape {tuple(shape)} has no matrix layout (fewer than 2 dimensions)")
        if self.kind == "transposed":
            rows, cols = shape[1], shape[0]
        else:
            rows, cols = shape[0], math.prod(shape[1:])
        if rows % self.groups:
            raise ValueError(f"{rows} output units cannot be split into {self.groups} groups (shape {tuple(shape)})")
        return self.groups, rows // self.groups, cols

    def matrices(self, tensor: Tensor) -> Tensor:
        """The tensor as ``[groups, rows, cols]`` (a view where the layout allows one; a copy for ``"transposed"``
        weights that are not contiguous after transposing)."""
        groups, rows, cols = self.matrix_shape(tensor.shape)
        t = tensor.T if self.kind == "transposed" else tensor
        return t.reshape(groups, rows, cols)

    def from_matrices(self, matrices: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Inverse of :meth:`matrices`: a tensor of ``shape`` from ``[groups, rows, cols]``."""
        groups, rows, cols = self.matrix_shape(shape)
        if tuple(matrices.shape) != (groups, rows, cols):
            raise ValueError(f"expected matrices of shape {(groups, rows, cols)}, got {tuple(matrices.shape)}")
        if self.kind == "transposed":
            return matrices.reshape(groups * rows, cols).T
        return matrices.reshape(shape)

    @torch.no_grad()
    def copy_matrices_(self, tensor: Tensor, matrices: Tensor) -> Tensor:
        """Write ``[groups, rows, cols]`` into ``tensor`` in place (its dtype and device); returns ``tensor``."""
        return tensor.copy_(self.from_matrices(matrices, tensor.shape))


def layout_of(module: nn.Module, attr: str, tensor: Tensor | None = None) -> MatrixLayout:
    """The :class:`MatrixLayout` of parameter ``attr`` of ``module`` (its own attribute, not a submodule's).

    Args:
        module: the module owning the parameter.
        attr: the parameter's attribute name on ``module`` (``"weight"``, ``"in_proj_weight"``, ...).
        tensor: the parameter; default ``getattr(module, attr)``.

    >>> layout_of(torch.nn.Linear(3, 2), "weight")
    MatrixLayout(kind='linear', groups=1, kernel=())
    >>> layout_of(torch.nn.Linear(3, 2), "bias").kind
    'vector'
    """
    tensor = getattr(module, attr) if tensor is None else tensor
    if tensor.dim() < 2:
        return MatrixLayout("vector")
    if attr == "weight":
        if isinstance(module, nn.Linear):
            return MatrixLayout("linear")
        if isinstance(module, CONV_TYPES):
            return MatrixLayout("conv", groups=module.groups, kernel=tuple(tensor.shape[2:]))
        conv1d = hf_conv1d_type()
        if conv1d is not None and isinstance(module, conv1d):
            return MatrixLayout("transposed")
    if isinstance(module, nn.MultiheadAttention) and attr == "in_proj_weight":
        return MatrixLayout("blocks", groups=3)
    if isinstance(module, nn.MultiheadAttention) and attr in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        return MatrixLayout("linear")
    return MatrixLayout("matrix")
