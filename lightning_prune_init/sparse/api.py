"""``enable_sparse_execution`` / ``disable_sparse_execution``: switch masked layers to sparse kernels and back.

Pruning at initialization fixes the sparse structure before the first step, so it can be compiled once. With
sparse execution on, each switched ``nn.Linear`` (:class:`~lightning_prune_init.sparse.linear.SparseLinear`)
computes with CSR kernels whose structure is built once, and its trained state is its kept values only: an
``nnz``-sized Parameter ``<layer>.weight_values`` (optimizer state ``nnz``-sized, nothing of size ``numel``
touched per step). Its ``state_dict`` keeps the plain dense ``weight`` key (docs/sparse.md has the
measurements and the Lightning lifecycle).

Which layers run sparse:

* ``mode="on"``: every eligible layer (``nn.Linear`` itself with a masked ``weight``, float32/float64, not
  tied to another module);
* ``mode="auto"``: every eligible layer measured faster sparse than dense at its real input shape
  (:func:`~lightning_prune_init.sparse.timing.time_layer`; the shapes come from one forward on
  ``example_inputs``), by a margin: ``sparse_ms < threshold · dense_ms``;
* ``decisions=``: exactly the layers a previous report switched (a resumed run, or other ranks).

Convolutions stay dense and are reported so: on CPU no sparse convolution path (im2col + CSR) was measured
faster than the dense kernels at the densities pruning at initialization uses (docs/sparse.md).

>>> import torch
>>> from lightning_prune_init import apply_masks
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> _ = apply_masks(net, {"0.weight": torch.rand(8, 8) < 0.25})
>>> report = enable_sparse_execution(net, "on")
>>> report.decisions, type(net[0]).__name__, [n for n, _ in net.named_parameters()]
({'0.weight': True, '2.weight': False}, 'SparseLinear', ['0.weight_values', '0.bias', '2.weight', '2.bias'])
>>> _ = disable_sparse_execution(net)
>>> type(net[0]).__name__
'Linear'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from lightning_prune_init._quiet import quiet_run
from lightning_prune_init.masks import apply_masks, get_masks, remove_masks
from lightning_prune_init._validation import check_bool_masks, check_choice, check_int, check_mapping, check_number
from lightning_prune_init.sparse.eligibility import SPARSE_TYPES, candidates, kernel_for, sparse_modules
from lightning_prune_init.sparse.linear import SparseLinear, densify_linear_, sparsify_linear_
from lightning_prune_init.sparse.semi_structured import from_semi_structured_, to_semi_structured_
from lightning_prune_init.sparse.report import LayerDecision, SparseExecutionReport
from lightning_prune_init.sparse.timing import Workload, time_layer

__all__ = ["disable_sparse_execution", "enable_sparse_execution", "sparse_modules"]

Mode = Literal["auto", "on"]


def _call(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a dict (Lightning's
    ``example_input_array`` convention)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _record_inputs(model: nn.Module, modules: Mapping[str, nn.Module], example_inputs: Any) -> dict[str, tuple]:
    """``{name: (input shape, input requires grad)}`` of each module's first call in one forward on the inputs."""
    records: dict[str, tuple] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name not in records and args and isinstance(args[0], Tensor):
                records[name] = (tuple(args[0].shape), bool(args[0].requires_grad))

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    try:
        with quiet_run(model), torch.enable_grad():
            _call(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return records


def enable_sparse_execution(
    model: nn.Module,
    mode: Mode = "auto",
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
    example_inputs: Any = None,
    decisions: Optional[Mapping[str, bool]] = None,
    workload: Workload = "train",
    threshold: float = 0.9,
    rounds: int = 5,
) -> SparseExecutionReport:
    """Switch masked ``nn.Linear`` layers of ``model`` to sparse execution; returns what was decided, per layer.

    Args:
        model: the module (not a DDP wrapper: pass ``ddp.module``). Masks attached to it are detached from the
            switched layers (each layer keeps its mask in its CSR structure; ``module.pruning_masks()``).
        mode: ``"auto"`` (default; switch the layers measured faster, see the module docstring) or ``"on"``.
        masks: ``{parameter name: bool mask}`` (``True`` = kept); default: the masks attached to ``model``. With
            explicit masks a plain (e.g. exported, ``remove_masks``-ed) model can run sparse for inference.
        example_inputs: what ``model`` is called with once to record each layer's input shape (``"auto"``):
            a tensor, a tuple (``model(*inputs)``) or a dict (``model(**inputs)``).
        decisions: ``{parameter name: bool}`` from a previous report (:attr:`SparseExecutionReport.decisions`):
            switch exactly those layers, measure nothing (``mode`` is then only recorded).
        workload: what ``"auto"`` times: ``"train"`` (forward, backward, SGD step; default) or ``"inference"``.
        threshold: ``"auto"`` switches a layer when ``sparse_ms < threshold · dense_ms``; default 0.9 (a layer
            barely faster is not worth the timing noise).
        rounds: timed rounds per variant and layer (``"auto"``); default 5.

    Returns:
        A :class:`~lightning_prune_init.sparse.report.SparseExecutionReport` listing every masked tensor and
        every Linear/conv weight: density, decision, reason, measured times and ratio, seconds spent deciding.

    Raises:
        ValueError / TypeError: a bad argument, no masks, masks that do not fit the model, ``"auto"`` without
            ``example_inputs``, or ``decisions`` naming a layer that cannot run sparse. Nothing is switched then.

    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    >>> masks = {"0.weight": torch.rand(64, 64) < 0.05}
    >>> report = enable_sparse_execution(net, "auto", masks=masks, example_inputs=torch.randn(32, 64), rounds=1)
    >>> report.layers["0.weight"].dense_ms > 0, report.layers["2.weight"].reason
    (True, 'no mask')
    """
    check_choice("mode", mode, ("auto", "on"))
    check_choice("workload", workload, ("train", "inference"))
    check_number("threshold", threshold, minimum=0.0, minimum_inclusive=False)
    check_int("rounds", rounds, minimum=1)
    decisions = check_mapping("decisions", decisions)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError("`model` is a DistributedDataParallel wrapper: pass `model.module` and wrap it again after")
    masks = get_masks(model) if masks is None else dict(masks)
    if not masks:
        raise ValueError("no masks: attach masks first (apply_masks) or pass `masks={name: bool mask}`")
    shapes = {n: tuple(m.pruning_masks()["weight"].shape) for n, m in sparse_modules(model).items()}
    shapes.update({n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)})
    check_bool_masks(masks, shapes)
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if uses[id(p)] > 1}
    found = candidates(model, masks)
    kernels = {
        n: kernel_for(module, attr, masks.get(n), tied=n in tied, workload=workload) for n, (module, attr) in found.items()
    }
    if decisions is not None:
        unknown = [n for n in decisions if n not in found]
        blocked = {n: kernels[n][1] for n, on in decisions.items() if on and n in found and kernels[n][0] is None}
        if unknown or blocked:
            raise ValueError(
                f"`decisions` cannot be followed on this model (a resumed run must switch the same layers): "
                f"unknown {unknown}, cannot run sparse {blocked}"
            )
    fresh = {n: found[n][0] for n, (kernel, _) in kernels.items() if kernel and not isinstance(found[n][0], SPARSE_TYPES)}
    records = {}
    if mode == "auto" and decisions is None:
        if example_inputs is None:
            raise ValueError(
                "mode='auto' times each layer at its real input shape: pass `example_inputs` (what the model is "
                "called with), or use mode='on'"
            )
        records = _record_inputs(model, {n: m for n, m in fresh.items() if kernels[n][0] == "csr"}, example_inputs)

    timing = {"workload": workload, "threshold": threshold, "rounds": rounds}
    layers = {
        name: _decide(name, found[name][0], masks.get(name), kernels[name], mode, decisions, records, timing)
        for name in found
    }
    switch = [n for n, x in layers.items() if x.sparse and n in fresh]
    attached = get_masks(model)
    detached = [n for n in switch if n in attached]
    if detached:
        remove_masks(model, names=detached)
    for name in switch:
        (sparsify_linear_ if layers[name].kernel == "csr" else to_semi_structured_)(fresh[name], masks[name])
    return SparseExecutionReport(mode, layers)


def _decide(
    name: str,
    module: nn.Module,
    mask: Optional[Tensor],
    kernel: tuple[Optional[str], str],
    mode: str,
    decisions: Optional[Mapping[str, bool]],
    records: Mapping[str, tuple],
    timing: Mapping[str, Any],
) -> LayerDecision:
    """The decision for one candidate tensor (timing it when ``"auto"`` asks)."""
    density = None if mask is None else float(torch.count_nonzero(mask)) / max(1, mask.numel())
    shape = tuple(mask.shape) if mask is not None else tuple(getattr(module, name.rpartition(".")[2]).shape)
    entry = dict(name=name, kind=type(module).__name__, shape=shape, density=density)
    which, why = kernel
    if which is None:
        return LayerDecision(**entry, sparse=False, reason=why)
    if isinstance(module, SPARSE_TYPES):
        return LayerDecision(**entry, sparse=True, reason=why, kernel=which)
    if decisions is not None:
        on = bool(decisions.get(name, False))
        return LayerDecision(**entry, sparse=on, reason="as decided before", kernel=which if on else None)
    if mode == "on":
        return LayerDecision(**entry, sparse=True, reason="mode='on'", kernel=which)
    if which != "csr":
        return LayerDecision(**entry, sparse=False, reason=f"{which} kernels are not timed by 'auto': use mode='on'")
    if name not in records:
        return LayerDecision(**entry, sparse=False, reason="not called by example_inputs; left dense")
    input_shape, needs_grad = records[name]
    measured = time_layer(
        module, mask, input_shape, workload=timing["workload"], input_requires_grad=needs_grad, rounds=timing["rounds"]
    )
    faster = measured.sparse_ms < timing["threshold"] * measured.dense_ms
    return LayerDecision(
        **entry,
        sparse=faster,
        reason=f"measured {'faster' if faster else 'not faster'} (threshold {timing['threshold']:g})",
        dense_ms=measured.dense_ms,
        sparse_ms=measured.sparse_ms,
        decide_s=measured.seconds,
        kernel="csr" if faster else None,
    )


def disable_sparse_execution(model: nn.Module, *, reattach_masks: bool = True) -> SparseExecutionReport:
    """Switch every layer of ``model`` in sparse execution back to a dense ``nn.Linear``; returns a report.

    Each weight becomes a dense Parameter again (exact zeros at pruned entries) and, with ``reattach_masks``
    (default), its mask is attached again (:func:`~lightning_prune_init.apply_masks`), so training can go on
    masked. Optimizers built before hold the compact values: build them again.

    >>> disable_sparse_execution(torch.nn.Linear(2, 2)).layers
    {}
    """
    modules = sparse_modules(model)
    masks = {name: m.pruning_masks()["weight"] for name, m in modules.items()}
    layers = {
        name: LayerDecision(name, "Linear", tuple(masks[name].shape), float(masks[name].float().mean()), False, "disabled")
        for name in modules
    }
    for module in modules.values():
        (densify_linear_ if isinstance(module, SparseLinear) else from_semi_structured_)(module)
    if reattach_masks and masks:
        apply_masks(model, masks)
    return SparseExecutionReport("off", layers)
