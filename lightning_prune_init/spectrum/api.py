"""The entry point: singular values of the weights, of each layer's Jacobian, and of the whole network.

Three scopes (docs/monitoring.md), keyed by layer (:mod:`lightning_prune_init.spectrum.tracing`), except the
end-to-end scope, keyed by :data:`END_TO_END`:

``"weights"`` (data-free)
    The singular values of each selected weight read as its matrices
    (:class:`~lightning_prune_init.layouts.MatrixLayout`): ``[out, in]`` for a linear layer and for transformers'
    ``Conv1D`` (stored ``[in, out]``), ``[c_out/g, c_in/g·prod(k)]`` per group for a convolution (its operator is
    block diagonal over the groups, so the groups' values are pooled), the query, key and value blocks of an
    attention ``in_proj_weight``. The matrices the approximate-isometry repair acts on; for a convolution only a
    proxy of the operator (:func:`~lightning_prune_init.spectrum.fft.conv_singular_values_fft` gives its values).
``"layerwise"``
    For each example, ``∂ x_next / ∂ x_l``: the input of the next selected layer with respect to the input of this
    one, through the model's real forward code. For an MLP ``x_l = φ(W_l x_{l-1} + b_l)`` this is ``D_l W_l`` with
    ``D_l = diag(φ'(h_l))``.
``"end_to_end"``
    For each example, the Jacobian of the model output with respect to its first floating activation: the input,
    or for token models the output of the input embedding (:mod:`lightning_prune_init.spectrum.calls`). What the
    authors' code measures.

Methods: ``"exact"`` forms each Jacobian (products with basis vectors of its smaller side) and calls
``torch.linalg.svdvals``; ``"estimate"`` is matrix-free (:mod:`lightning_prune_init.spectrum.estimators`); when one
side has at most ``lanczos_steps`` dimensions, forming the Jacobian costs fewer products than estimating it, and
``"estimate"`` returns exact values (``method="exact"``); ``"auto"`` is ``"exact"`` when
``min(m, n) <= max_exact_dim`` and ``m·n <= max_exact_numel``, else ``"estimate"``.

Nothing here changes the model or the training run: the model runs quietly (:func:`lightning_prune_init._quiet.
quiet_run`: eval mode, every module's mode and every random stream restored), under ``torch.no_grad()`` (``torch.func``
transforms still differentiate with respect to their explicit inputs; no ``.grad`` is written) with attention on the
math kernel, and random probes come from a dedicated ``torch.Generator`` seeded with ``seed``. The data-dependent
scopes assume examples do not interact in ``eval()`` mode (true for the usual layers: batch norm then uses its
running statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_prune_init._quiet import quiet_run
from lightning_prune_init._validation import check_choice, check_int, check_patterns
from lightning_prune_init.parameters import ParameterSelection, as_selection
from lightning_prune_init.spectrum.calls import (
    ForwardFn,
    Probe,
    batch_size,
    find_start,
    math_attention,
    start_function,
)
from lightning_prune_init.spectrum.estimators import estimate_stats, exact_values
from lightning_prune_init.spectrum.operators import BatchedOperator, JacobianOperator, MatrixOperator
from lightning_prune_init.spectrum.stats import SpectrumStats, pool_matrices, stats_from_values
from lightning_prune_init.spectrum.tracing import (
    layerwise_function,
    layerwise_pairs,
    select_keys,
    selected_layers,
    trace_inputs,
)

__all__ = ["END_TO_END", "METHODS", "SCOPES", "jacobian_singular_values"]

#: Key of the end-to-end result in the dictionary returned by :func:`jacobian_singular_values`.
END_TO_END = "end_to_end"
#: Accepted values of ``scope``.
SCOPES: tuple[str, ...] = ("weights", "layerwise", "end_to_end")
#: Accepted values of ``method``.
METHODS: tuple[str, ...] = ("exact", "estimate", "auto")


def jacobian_singular_values(
    model: nn.Module,
    inputs: Probe | None = None,
    *,
    scope: str = "layerwise",
    method: str = "auto",
    layers: str | Sequence[str] | None = None,
    parameters: ParameterSelection | str | Sequence[str] | None = None,
    input_key: str | None = None,
    forward_fn: ForwardFn | None = None,
    max_exact_dim: int = 128,
    max_exact_numel: int = 2**22,
    power_iters: int = 10,
    num_probes: int = 4,
    lanczos_steps: int = 20,
    lanczos_probes: int = 1,
    seed: int = 0,
) -> dict[str, SpectrumStats]:
    """Singular-value statistics of the weights, the layer Jacobians or the end-to-end Jacobian.

    Args:
        model: the network. Its forward is ``forward_fn(model, inputs)``; by default ``model(inputs)`` for a
            tensor and ``model(**inputs)`` for a dict batch. Its output is a tensor with the batch first, or a
            ``ModelOutput``/dict (read through ``logits``, else its first tensor) or a tuple (its first tensor).
        inputs: the probe: a ``[B, ...]`` tensor, or a dict batch whose tensors have the batch first (token ids,
            attention masks, ...). Required for ``"layerwise"`` and ``"end_to_end"``, ignored for ``"weights"``.
            Examples must not interact in ``eval()`` mode.
        scope: ``"weights"``, ``"layerwise"`` (default) or ``"end_to_end"`` (module docstring).
        method: ``"exact"``, ``"estimate"`` or ``"auto"`` (default).
        layers: glob pattern(s) on layer names choosing which layers to report (default: every selected layer).
            The layerwise "next layer" is still searched among all selected layers.
        parameters: the weights whose layers are analysed: a
            :class:`~lightning_prune_init.parameters.ParameterSelection` of ``model`` (e.g. the pruner's), a glob
            pattern or list of them on parameter names (``include``), or ``None`` (the default rule: weights of
            linear, conv, transformers ``Conv1D`` and attention input projections).
        input_key: for a dict batch, the entry the end-to-end Jacobian starts from when it is floating; an integer
            entry (token ids) starts it from the input embedding's output. Default: found automatically.
        forward_fn: ``(model, inputs) -> output``, replacing the default call.
        max_exact_dim: ``"auto"`` uses ``"exact"`` when ``min(m, n) <= max_exact_dim`` ...
        max_exact_numel: ... and ``m·n <= max_exact_numel`` (elements of one example's Jacobian). Also the memory
            budget (in elements) of one chunk of products when forming Jacobians.
        power_iters: power-iteration steps for the largest value (estimate); default 10, two products each. With
            Lanczos on, the reported maximum is the larger of the two estimates.
        num_probes: Rademacher probes per example for Hutchinson's ``mean_sq`` (estimate); default 4, one product
            each.
        lanczos_steps: Lanczos steps per probe (estimate); ``0`` turns Lanczos off (then ``mean``, ``std``, ``min``
            and ``cond`` are ``nan``); default 20, two products each.
        lanczos_probes: Lanczos start vectors per example; default 1 (examples act as further probes).
        seed: seed of the dedicated generator of the random probes.

    Returns:
        ``{layer: SpectrumStats}`` (``"layerwise"``: in execution order; ``"weights"``: in parameter order), or
        ``{END_TO_END: SpectrumStats}``.

    Raises:
        ValueError: unknown ``scope``/``method``, missing or empty ``inputs``, bad sizes, a ``layers`` pattern that
            matches nothing, no floating activation to start the end-to-end Jacobian from.
        TypeError: ``model`` is not a module, ``inputs`` is neither a tensor nor a dict, the output holds no tensor.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Tanh())
    >>> _ = torch.nn.init.eye_(net[0].weight)
    >>> stats = jacobian_singular_values(net, torch.zeros(2, 3), scope="end_to_end")["end_to_end"]
    >>> stats.mean, stats.shape, stats.num_examples  # tanh'(0) = 1: the identity
    (1.0, (3, 3), 2)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("scope", scope, SCOPES)
    check_choice("method", method, METHODS)
    patterns = check_patterns("layers", layers)
    check_int("max_exact_dim", max_exact_dim, minimum=0)
    check_int("max_exact_numel", max_exact_numel, minimum=1)
    check_int("power_iters", power_iters, minimum=1)
    check_int("num_probes", num_probes, minimum=1)
    check_int("lanczos_steps", lanczos_steps, minimum=0)
    check_int("lanczos_probes", lanczos_probes, minimum=1)
    check_int("seed", seed)
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError(f"`forward_fn` must be a callable (model, inputs) -> output, got {type(forward_fn).__name__}")
    if input_key is not None and not isinstance(input_key, str):
        raise TypeError(f"`input_key` must be a key of the dict batch or None, got {input_key!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if scope != "weights":
        if inputs is None:
            raise TypeError(f"`inputs` must be a [B, ...] tensor or a dict batch for scope={scope!r}, got None")
        batch_size(inputs)
        first = inputs if isinstance(inputs, torch.Tensor) else next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        device = first.device
    selection = as_selection(model, parameters) if scope != "end_to_end" else None
    estimate_kwargs = {"power_iters": power_iters, "num_probes": num_probes, "lanczos_steps": lanczos_steps}

    with quiet_run(model, [device]), torch.no_grad(), math_attention():
        generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)

        def compute(op: BatchedOperator) -> SpectrumStats:
            small_side = min(op.m, op.n) <= max(lanczos_steps, 1) and op.m * op.n <= max_exact_numel
            auto_exact = min(op.m, op.n) <= max_exact_dim and op.m * op.n <= max_exact_numel
            if method == "exact" or (method == "auto" and auto_exact) or small_side:
                return stats_from_values(exact_values(op, max_exact_numel), (op.m, op.n))
            return estimate_stats(op, lanczos_probes=lanczos_probes, generator=generator, **estimate_kwargs)

        if scope == "end_to_end":
            assert inputs is not None
            fn, start = start_function(model, inputs, find_start(model, inputs, forward_fn, input_key), forward_fn)
            return {END_TO_END: compute(JacobianOperator(fn, start))}

        assert selection is not None
        found = selected_layers(model, selection)
        wanted = select_keys(list(found), patterns)
        if scope == "weights":
            results = {}
            for key in wanted:
                layout = found[key].layout
                matrices = layout.matrices(selection[found[key].parameter].detach())
                results[key] = pool_matrices(compute(MatrixOperator(matrices)), layout.groups)
            return results

        assert inputs is not None
        modules: dict[str, nn.Module] = {}
        for key, layer in found.items():  # one key per module: several tensors of one module share its Jacobian
            if layer.module is not model and all(m is not layer.module for m in modules.values()):
                modules[key] = layer.module
        _, base = trace_inputs(model, inputs, forward_fn, modules)
        pairs = layerwise_pairs(model, inputs, forward_fn, modules, wanted)
        results = {}
        for key, nxt in pairs.items():
            fn = layerwise_function(model, inputs, forward_fn, modules[key], None if nxt is None else modules[nxt])
            results[key] = compute(JacobianOperator(fn, base[key]))
        return results
