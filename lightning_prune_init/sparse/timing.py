"""Timing one layer dense against sparse at its real input shape, as ``"auto"`` decides.

:func:`time_layer` builds scratch copies of the layer (the model is not touched): a dense one (``F.linear`` on the
masked weight) and a sparse one (:func:`~lightning_prune_init.sparse.kernels.sparse_linear` on the kept values),
and times one *step* of each on random inputs of the recorded shape:

* ``workload="train"``: forward, backward (the input gradient only when the layer's input needs one, as in the
  model) and an SGD step with momentum and weight decay on the layer's parameters (its optimizer cost:
  ``numel``-sized dense, ``nnz``-sized sparse);
* ``workload="inference"``: the forward under ``torch.no_grad()``.

The two are interleaved round by round (machine drift hits both alike) and the medians compared; the rounds
stop early when one variant is plainly (2×) faster. Every second spent here, the structure build included, is
reported as the layer's decision time.

>>> import torch
>>> layer, mask = torch.nn.Linear(64, 32), torch.rand(32, 64) < 0.1
>>> timing = time_layer(layer, mask, (8, 64), rounds=2)
>>> timing.dense_ms > 0 and timing.sparse_ms > 0 and timing.seconds > 0
True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune_init.sparse.kernels import sparse_linear
from lightning_prune_init.sparse.structure import CsrStructure

__all__ = ["LayerTiming", "Workload", "time_layer"]

Workload = Literal["train", "inference"]


class LayerTiming(NamedTuple):
    """Median milliseconds of one step, dense and sparse, and the seconds the measurement took.

    >>> LayerTiming(2.0, 0.5, 0.1).sparse_ms / LayerTiming(2.0, 0.5, 0.1).dense_ms
    0.25
    """

    dense_ms: float
    sparse_ms: float
    seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(forward: Callable[[Tensor], Tensor], params: list[Tensor], x: Tensor, dy: Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward(x).backward(dy)
        optimizer.step()

    return step


def _inference_step(forward: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            forward(x)

    return step


def time_layer(
    layer: nn.Linear,
    mask: Tensor,
    input_shape: tuple[int, ...],
    *,
    workload: Workload = "train",
    input_requires_grad: bool = True,
    rounds: int = 5,
    clear: float = 2.0,
) -> LayerTiming:
    """Median time of one step of ``layer`` dense and sparse under ``mask``, at input shape ``input_shape``.

    Args:
        layer: the ``nn.Linear`` (read only; its weight's device and dtype are used).
        mask: bool ``[out, in]``, ``True`` = kept.
        input_shape: the shape the layer receives in the model, e.g. ``(batch, in)`` or ``(batch, tokens, in)``.
        workload: ``"train"`` (forward + backward + SGD step) or ``"inference"`` (forward only).
        input_requires_grad: whether the layer's input needs a gradient in the model (not for a first layer).
        rounds: timed rounds of each variant, interleaved (after one warm-up step each).
        clear: stop after 2 rounds already when one variant is ``clear`` times faster than the other (default 2):
            the decision is plain, and measuring on costs decision time.

    >>> time_layer(torch.nn.Linear(16, 16), torch.eye(16, dtype=torch.bool), (4, 16), workload="inference").seconds > 0
    True
    """
    start = time.perf_counter()
    weight = layer.weight.detach()
    device, dtype = weight.device, weight.dtype
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(input_shape, device=device, dtype=dtype, generator=generator)
    structure = CsrStructure.from_mask(mask.to(device))
    dense_w = nn.Parameter(weight * mask.to(device))
    values = nn.Parameter(structure.gather(weight).clone())
    bias = [] if layer.bias is None else [nn.Parameter(layer.bias.detach().clone())]
    dense_b = [nn.Parameter(layer.bias.detach().clone())] if bias else []

    def dense(inp: Tensor) -> Tensor:
        return F.linear(inp, dense_w, dense_b[0] if dense_b else None)

    def sparse(inp: Tensor) -> Tensor:
        return sparse_linear(inp, values, bias[0] if bias else None, structure)

    if workload == "train":
        x.requires_grad_(input_requires_grad)
        dy = torch.randn(*input_shape[:-1], weight.shape[0], device=device, dtype=dtype, generator=generator)
        steps = {"dense": _train_step(dense, [dense_w, *dense_b], x, dy), "sparse": _train_step(sparse, [values, *bias], x, dy)}
    else:
        steps = {"dense": _inference_step(dense, x), "sparse": _inference_step(sparse, x)}
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up: allocations, kernel selection
        step()
    for done in range(1, rounds + 1):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
        dense_ms, sparse_ms = (statistics.median(samples[name]) * 1e3 for name in ("dense", "sparse"))
        if done >= 2 and not 1 / clear < sparse_ms / dense_ms < clear:
            break  # the answer is clear: the remaining rounds would only cost decision time
    return LayerTiming(dense_ms, sparse_ms, time.perf_counter() - start)
