"""``SparseLinear``: an ``nn.Linear`` whose trained state is its kept weights only, switched in place.

:func:`sparsify_linear_` turns an ``nn.Linear`` instance into a :class:`SparseLinear` (the instance's class is
swapped, as ``torch.nn.utils.parametrize`` does; the object, its name in the model, its bias Parameter and its
hooks stay): the dense ``weight`` Parameter is replaced by ``weight_values``, a Parameter holding the ``nnz``
kept values in CSR order, and the forward runs :func:`~lightning_prune_init.sparse.kernels.sparse_linear`.
:func:`densify_linear_` turns it back, with the dense ``weight`` (exact zeros at pruned entries).

What stays as it was:

* ``isinstance(m, nn.Linear)``, ``in_features``/``out_features``, ``copy.deepcopy`` and pickling (the class is
  importable), ``.to(device)`` (the structure follows the values);
* ``m.state_dict()`` has the plain dense ``weight`` key (zeros at pruned entries) and no other: a checkpoint
  loads with ``strict=True`` into a plain model, and a dense state dict loads into a ``SparseLinear`` (the kept
  entries are read; non-zeros at pruned entries are dropped, with a warning, as the masks would zero them);
* ``m.weight`` *reads* the dense weight: a new tensor, differentiable with respect to ``weight_values`` (so
  code that reads it still trains correctly, only not faster). Writes to it are lost: write ``weight_values``
  (or initialize before switching, as the callback does); ``m.reset_parameters()`` draws the kept values;
* ``m.pruning_masks()`` returns ``{"weight": bool mask}``: ``get_masks`` reports the layer's mask.

>>> import torch
>>> layer = torch.nn.Linear(4, 2)
>>> mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
>>> sparse = sparsify_linear_(layer, mask)
>>> sparse is layer, isinstance(layer, torch.nn.Linear), tuple(layer.weight_values.shape)
(True, True, (3,))
>>> sorted(layer.state_dict())
['bias', 'weight']
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init._torch_internals import parameter_slot, replace_parameter_
from lightning_prune_init.sparse.kernels import sparse_linear
from lightning_prune_init.sparse.structure import CsrStructure

__all__ = ["VALUES", "SparseLinear", "densify_linear_", "sparsify_linear_"]

#: The name of the compact Parameter of a :class:`SparseLinear` (``named_parameters()`` yields ``<layer>.weight_values``).
VALUES = "weight_values"
_STRUCTURE = "_sparse_structure"


class SparseLinear(nn.Linear):
    """An ``nn.Linear`` computing with CSR kernels on its kept weights (see the module docstring).

    Not built directly: :func:`sparsify_linear_` switches an existing ``nn.Linear``.

    Attributes:
        weight_values: ``nn.Parameter [nnz]``, the kept weights in CSR order (what optimizers update).
        bias: the layer's bias Parameter, unchanged.

    >>> layer = sparsify_linear_(torch.nn.Linear(3, 2), torch.tensor([[True, False, False], [False, True, True]]))
    >>> layer.density, layer.weight.shape, layer(torch.ones(4, 3)).shape
    (0.5, torch.Size([2, 3]), torch.Size([4, 2]))
    """

    in_features: int
    out_features: int

    @property
    def structure(self) -> CsrStructure:
        """The layer's :class:`~lightning_prune_init.sparse.structure.CsrStructure` (built once)."""
        return self.__dict__[_STRUCTURE]

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The dense weight ``[out, in]``: a new tensor on each read (zeros at pruned entries), differentiable
        with respect to ``weight_values``; writes to it are lost."""
        return self.structure.to_dense(self._parameters[VALUES])

    @weight.setter
    def weight(self, value: Any) -> None:
        raise AttributeError(
            "the `weight` of a layer in sparse execution is read-only (its trained state is `weight_values`): "
            "write `weight_values`, or call disable_sparse_execution(model) first"
        )

    @property
    def density(self) -> float:
        """Kept entries / entries."""
        return self.structure.density

    def pruning_masks(self) -> dict[str, Tensor]:
        """``{"weight": bool mask [out, in]}`` (``True`` = kept): the protocol ``get_masks`` reads."""
        return {"weight": self.structure.mask()}

    def forward(self, input: Tensor) -> Tensor:
        return sparse_linear(input, self._parameters[VALUES], self.bias, self.structure)

    def reset_parameters(self) -> None:
        """Draw the kept values and the bias as ``nn.Linear`` draws its entries: ``U(−1/√in, 1/√in)``.

        (``nn.Linear.reset_parameters`` would write into a dense copy of the weight, and the draw would be lost.)
        """
        if VALUES not in self._parameters:  # called by nn.Linear.__init__ only, never for a switched layer
            return
        bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        with torch.no_grad():
            self._parameters[VALUES].uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4g}, sparse execution (CSR)"

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> SparseLinear:
        super()._apply(fn, recurse)
        self.__dict__[_STRUCTURE] = self.structure.apply(fn)
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        start = len(destination)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        written = [destination.popitem() for _ in range(len(destination) - start)][::-1]
        for key, value in written:  # the dense weight in place of the values, in the same order
            if key == prefix + VALUES:
                destination[prefix + "weight"] = self.structure.to_dense(value.detach())
            else:
                destination[key] = value

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key, values_key = prefix + "weight", prefix + VALUES
        if key in state_dict and values_key not in state_dict:  # `state_dict` is load_state_dict's own copy
            dense = state_dict.pop(key)
            if tuple(dense.shape) != self.structure.shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(dense.shape)} from checkpoint, "
                    f"the shape in current model is {self.structure.shape}."
                )
                return
            kept = self.structure.gather(dense.to(self.structure.device))
            dropped = int(torch.count_nonzero(dense)) - int(torch.count_nonzero(kept))
            if dropped:
                warnings.warn(
                    f"{key}: {dropped} non-zero value(s) at pruned entries were dropped when loading into a layer in "
                    "sparse execution (the masks would zero them): the loaded weights are not this mask's",
                    stacklevel=2,
                )
            state_dict[values_key] = kept
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if values_key in missing_keys:
            missing_keys[missing_keys.index(values_key)] = key


def sparsify_linear_(module: nn.Linear, mask: Tensor) -> SparseLinear:
    """Switch ``module`` (an ``nn.Linear``) to sparse execution in place under ``mask``; returns it.

    The kept values are copied from the weight (entries where ``mask`` is ``False`` are dropped, whatever
    they hold); the dense ``weight`` Parameter is replaced by ``weight_values`` (``requires_grad`` as before).
    Optimizers built before no longer hold the layer's weight: build them again.

    Raises:
        TypeError: ``module`` is not exactly ``nn.Linear`` (subclasses may compute otherwise), or ``mask`` is not
            a bool tensor of the weight's shape.

    >>> layer = sparsify_linear_(torch.nn.Linear(3, 2), torch.tensor([[True, False, True], [False, False, True]]))
    >>> [name for name, _ in layer.named_parameters()]
    ['weight_values', 'bias']
    """
    if type(module) is not nn.Linear:
        raise TypeError(f"only nn.Linear itself is switched to sparse execution, got {type(module).__name__}")
    weight = module.weight
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"`mask` must be a torch.bool tensor of the weight's shape {tuple(weight.shape)}, got {got}")
    structure = CsrStructure.from_mask(mask.to(weight.device))
    values = nn.Parameter(structure.gather(weight.detach()).clone(), requires_grad=weight.requires_grad)
    module.__class__ = SparseLinear
    module.__dict__[_STRUCTURE] = structure
    replace_parameter_(module, "weight", VALUES, values)
    return module  # type: ignore[return-value]


def densify_linear_(module: SparseLinear) -> nn.Linear:
    """Switch a :class:`SparseLinear` back to a plain ``nn.Linear`` in place; returns it.

    Its ``weight`` becomes a dense Parameter again, exact zeros at pruned entries. Masks are not attached here
    (:func:`~lightning_prune_init.sparse.api.disable_sparse_execution` does it).

    >>> layer = sparsify_linear_(torch.nn.Linear(2, 1), torch.tensor([[True, False]]))
    >>> type(densify_linear_(layer)).__name__, [n for n, _ in layer.named_parameters()]
    ('Linear', ['weight', 'bias'])
    """
    if not isinstance(module, SparseLinear):
        raise TypeError(f"expected a SparseLinear, got {type(module).__name__}")
    values = parameter_slot(module, VALUES)
    weight = nn.Parameter(module.structure.to_dense(values.detach()), requires_grad=values.requires_grad)
    del module.__dict__[_STRUCTURE]
    module.__class__ = nn.Linear
    replace_parameter_(module, VALUES, "weight", weight)
    return module
