"""Jacobian singular values: of the weights, of each layer's Jacobian, and of the whole network (docs/monitoring.md).

The package, one idea per module:

* :mod:`~lightning_prune_init.spectrum.api`: the entry point :func:`jacobian_singular_values` (scopes, methods);
* :mod:`~lightning_prune_init.spectrum.stats`: :class:`SpectrumStats`, the statistics every scope returns;
* :mod:`~lightning_prune_init.spectrum.operators`: weights and Jacobians as batches of linear operators;
* :mod:`~lightning_prune_init.spectrum.estimators`: exact values, power iteration, Hutchinson, Lanczos;
* :mod:`~lightning_prune_init.spectrum.calls`: how the model is called on a probe (tensor or dict batch), how its
  output is read, where the end-to-end Jacobian starts (the input, or the embedding output of a token model);
* :mod:`~lightning_prune_init.spectrum.tracing`: the layers of a selection and the layerwise Jacobians;
* :mod:`~lightning_prune_init.spectrum.fft`: exact values of a circular convolution operator.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> sorted(jacobian_singular_values(net, scope="weights"))
['0', '2']
"""

from lightning_prune_init.spectrum.api import END_TO_END, METHODS, SCOPES, jacobian_singular_values
from lightning_prune_init.spectrum.fft import conv_singular_values_fft
from lightning_prune_init.spectrum.stats import SpectrumStats

__all__ = [
    "END_TO_END",
    "METHODS",
    "SCOPES",
    "SpectrumStats",
    "conv_singular_values_fft",
    "jacobian_singular_values",
]
