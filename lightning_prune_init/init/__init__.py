"""Initializers studied by SPP, in the style of :mod:`torch.nn.init`, per matrix of each weight's layout.

Every initializer works in place on a weight, runs without recording autograd history, accepts a ``generator``
and a ``layout`` (:class:`~lightning_prune_init.layouts.MatrixLayout`: grouped and depthwise convs, transformers
``Conv1D`` stored ``[in, out]``, attention q/k/v blocks; default ``[out, in]`` or a ``groups=1`` conv) and
returns the tensor. :func:`init_model_` applies one scheme to the tensors of the parameter selection.

* :func:`orthogonal_`: Haar orthogonal matrices; block-orthogonal conv kernels (Xiao et al. 2018), per group,
  with orthonormal rows of the reshaped kernel when a group has more inputs than outputs.
* :func:`delta_orthogonal_`: orthogonal centre tap per group, every other tap zero.
* :func:`variance_scaling_`: untruncated normal with variance ``gamma · base``, ``base`` = ``1/fan_in``
  (VS-L, LeCun), ``2/(fan_in + fan_out)`` (VS-G, Glorot) or ``2/fan_in`` (VS-H, He), fans per matrix
  (:func:`calculate_fans`).
* :func:`init_tensor_`: one of :data:`SCHEMES` for one tensor; :func:`init_model_`: for a whole model.

Why these schemes (layerwise dynamical isometry): ``docs/method.md``, section 3.

>>> import torch
>>> from lightning_prune_init.layouts import layout_of
>>> conv = torch.nn.Conv2d(32, 16, 3, groups=2)  # each group maps 16 inputs to 8 outputs
>>> w = orthogonal_(conv.weight, layout=layout_of(conv, "weight")).detach().reshape(2, 8, -1)
>>> torch.allclose(w @ w.transpose(1, 2), torch.eye(8).expand(2, 8, 8), atol=1e-6)  # W Wᵀ = I per group
True
"""

from lightning_prune_init.init.model import SCHEMES, init_model_, init_tensor_
from lightning_prune_init.init.orthogonal import delta_orthogonal_, orthogonal_
from lightning_prune_init.init.variance_scaling import VARIANCE_SCALING_MODES, calculate_fans, variance_scaling_

__all__ = [
    "SCHEMES",
    "VARIANCE_SCALING_MODES",
    "calculate_fans",
    "delta_orthogonal_",
    "init_model_",
    "init_tensor_",
    "orthogonal_",
    "variance_scaling_",
]
