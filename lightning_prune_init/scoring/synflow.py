"""Iterative synaptic flow (SynFlow, Tanaka et al. 2020): the data-free ``"synflow"`` criterion.

Each round replaces every floating parameter and buffer by its absolute value (pruned entries by 0), casts it to
``dtype``, and runs one all-ones probe forward in eval mode; ``R = Σ output`` and the score of a selected entry
is ``|∂R/∂θ ⊙ θ|`` at ``θ = |W|``. For a linear chain ``R = 1ᵀ|W_L|⋯|W_1|1``. The substitution is done with
:func:`torch.func.functional_call`: the model itself is never written to. Rounds follow the exponential
schedule (:mod:`~lightning_prune_init.scoring.rounds`).

The probe (docs/criteria.md, "SynFlow"):

* floating inputs (images, features): ``ones(1, *input_shape)``, the shape from the ``input_shape`` option, the
  first batch, the model's ``example_input_array`` or an ``input_shape`` attribute of the model or a submodule;
* token models (integer ids, in a bare tensor, the first element of a tuple or the ``input_ids`` of a dict
  batch): the ids of one row of the first batch (or of ``example_input_array``) are fed, and the output of the
  model's input embedding (:func:`~lightning_prune_init.scoring.noise.input_embedding`) is replaced by ones: the
  all-ones tensor enters where the first floating activation is. Attention masks become all ones, ``labels`` are
  dropped, other entries keep their first row. The embedding itself gets no flow through its lookup (a tied
  output head gets its flow as a head).

>>> import torch
>>> from lightning_prune_init.parameters import select_parameters
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.Linear(4, 2, bias=False))
>>> ctx = ScoringContext(sparsity=0.5, options={"rounds": 1, "input_shape": (3,)})
>>> scores = synflow(net, None, select_parameters(net), ctx)
>>> flow = torch.ones(1, 2).double() @ net[1].weight.abs().double() @ net[0].weight.abs().double() @ torch.ones(3, 1).double()
>>> torch.allclose(scores["0.weight"].sum(), flow.sum())  # conservation: every layer carries the whole flow
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_prune_init._quiet import quiet_run
from lightning_prune_init._validation import check_choice, check_int
from lightning_prune_init.parameters import ParameterSelection
from lightning_prune_init.scoring.context import ScoringContext
from lightning_prune_init.scoring.guards import check_can_score
from lightning_prune_init.scoring.losses import LABEL_KEYS, ScoringInputError
from lightning_prune_init.scoring.noise import TOKEN_KEYS, input_embedding
from lightning_prune_init.scoring.registry import check_criterion_options, register_criterion
from lightning_prune_init.scoring.rounds import iterate_rounds

__all__ = ["synflow", "synflow_probe"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64}
_ID_DTYPES = (torch.int16, torch.int32, torch.int64)


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    check_int("rounds", options["rounds"], minimum=1)
    dtype = options["dtype"]
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    options["dtype"] = "float64" if check_choice("dtype", dtype, tuple(_DTYPES)) == "double" else dtype
    shape = options["input_shape"]
    if shape is not None:
        ok = isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) > 0
        if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"`input_shape` must be a tuple of positive ints (one input, no batch dim), got {shape!r}")
        options["input_shape"] = tuple(shape)
    return options


class _Probe(nn.Module):
    """Runs ``model`` on the probe (or ``logits_fn(model, probe)``), so that ``functional_call`` can reach it."""

    def __init__(self, model: nn.Module, logits_fn: Callable[[nn.Module, Any], Tensor] | None) -> None:
        super().__init__()
        self.model = model
        self.logits_fn = logits_fn

    def forward(self, probe: Any) -> Any:
        if self.logits_fn is not None:
            return self.logits_fn(self.model, probe)
        return self.model(**probe) if isinstance(probe, dict) else self.model(probe)


def _template(model: nn.Module, batches: Any) -> Any:
    """The batch the probe is shaped after: the first batch, else ``example_input_array``; None if neither."""
    if batches is not None:
        if isinstance(batches, (Tensor, Mapping)):
            return batches
        return next(iter(batches), None)
    return getattr(model, "example_input_array", None)


def synflow_probe(
    model: nn.Module, batches: Any, input_shape: Sequence[int] | None, dtype: torch.dtype
) -> tuple[Any, nn.Module | None]:
    """The all-ones probe SynFlow runs, and the embedding whose output is replaced by ones (None for float inputs).

    See the module docstring for where the probe's shape comes from.

    Raises:
        ScoringInputError: no shape can be found, a batch that cannot shape a probe, or token ids in a model with
            no input embedding.

    >>> probe, embedding = synflow_probe(torch.nn.Linear(3, 2), [torch.zeros(5, 3)], None, torch.float64)
    >>> probe, embedding
    (tensor([[1., 1., 1.]], dtype=torch.float64), None)
    """
    if input_shape is not None:
        return torch.ones((1, *input_shape), dtype=dtype), None
    template = _template(model, batches)
    if isinstance(template, (tuple, list)) and template and isinstance(template[0], Tensor):
        template = template[0]
    if template is None:
        shape = next((getattr(m, "input_shape") for m in model.modules()
                      if isinstance(getattr(m, "input_shape", None), (tuple, list)) and getattr(m, "input_shape")), None)
        if shape is None:
            raise ScoringInputError(
                "synflow needs the shape of one input: pass the option `input_shape=(C, H, W)`, a batch, or give the "
                "model an `example_input_array` (a tensor or a dict batch) or an `input_shape` attribute"
            )
        return torch.ones((1, *(int(s) for s in shape)), dtype=dtype), None
    if isinstance(template, Tensor) and template.dim() >= 1:
        if template.dtype in _ID_DTYPES:
            return template[:1], _embedding(model)
        return torch.ones((1, *template.shape[1:]), dtype=dtype, device=template.device), None
    if isinstance(template, Mapping) and all(isinstance(k, str) for k in template):
        probe: dict[str, Any] = {}
        embedding = None
        for key, value in template.items():
            if key in LABEL_KEYS:
                continue
            if isinstance(value, Tensor) and value.dim() >= 1:
                if value.is_floating_point():
                    value = torch.ones((1, *value.shape[1:]), dtype=dtype, device=value.device)
                elif key in TOKEN_KEYS and value.dtype in _ID_DTYPES:
                    embedding, value = _embedding(model), value[:1]
                else:
                    value = torch.ones_like(value[:1]) if key == "attention_mask" else value[:1]
            probe[key] = value
        return probe, embedding
    raise ScoringInputError(
        f"synflow shapes its all-ones probe after the first batch (a tensor, `(inputs, ...)` or a dict batch), got "
        f"{type(template).__name__}; pass the option `input_shape=(C, H, W)` instead"
    )


def _embedding(model: nn.Module) -> nn.Module:
    embedding = input_embedding(model)
    if embedding is None:
        raise ScoringInputError(
            f"synflow feeds token ids to {type(model).__name__} and replaces the output of its input embedding by ones, "
            "but the model has none (no `get_input_embeddings()`, no nn.Embedding). For floating inputs pass the option "
            "`input_shape`"
        )
    return embedding


def _flow(output: Any, dtype: torch.dtype) -> Tensor:
    if not isinstance(output, Tensor):
        logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        if not isinstance(logits, Tensor):
            raise ScoringInputError(
                f"synflow needs a model returning a tensor or an output with `.logits`, got {type(output).__name__}; "
                "with supervision='label_free'/'data_free' a `logits_fn` can say where the logits are"
            )
        output = logits
    flow = output.sum()
    if not bool(torch.isfinite(flow)):
        raise ValueError(
            f"synflow's R = Σ f(1) is {float(flow.detach())} in {dtype}: the product of |W| over the layers "
            "overflowed; use the option dtype='float64' (the default) or check the weights"
        )
    return flow


@register_criterion(
    "synflow",
    needs_data=False,
    iterative=True,
    options={"rounds": 100, "dtype": "float64", "input_shape": None},
    check_options=_check_options,
)
def synflow(model: nn.Module, batches: Any, parameters: ParameterSelection, context: ScoringContext) -> dict[str, Tensor]:
    """Iterative synaptic flow (module docstring), data-free.

    Options (``context.options``):
        rounds: number of rounds ``n`` (default 100, as Tanaka et al.); density ``d^(k/n)`` after round ``k``.
        dtype: ``"float64"`` (default; ``R`` is a product over all layers and overflows float32 on deep or wide
            nets) or ``"float32"`` (``torch.float32``/``torch.float64`` are accepted too).
        input_shape: one floating input's shape without the batch dimension; default from the first batch, the
            model's ``example_input_array``, or an ``input_shape`` attribute of the model or a submodule.

    ``context.sparsity`` (or a pattern) is needed; its scope, min_density, invert and pattern select each round's
    mask. The loss is not used, except a label-free/data-free ``logits_fn``, which then gives the output summed.

    Returns:
        ``{name: float64 scores}`` (float32 with ``dtype="float32"``), re-coded so that ``select_masks`` reproduces
        the final mask (:mod:`~lightning_prune_init.scoring.rounds`).

    Raises:
        ScoringInputError: no probe can be made, or the output is neither a tensor nor has ``.logits``.
        ValueError: ``R`` is not finite, or no flow reaches the selection (the message says why).

    >>> from lightning_prune_init.parameters import select_parameters
    >>> tokens = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))  # ids -> logits
    >>> ctx = ScoringContext(sparsity=0.5, options={"rounds": 1})
    >>> synflow(tokens, [torch.zeros(2, 5, dtype=torch.long)], select_parameters(tokens), ctx)["1.weight"].shape
    torch.Size([3, 4])
    """
    options = check_criterion_options(synflow, context.options)
    dtype = _DTYPES[options["dtype"]]
    check_can_score(model, parameters, "synflow")
    first = next(iter(parameters.values()))
    probe, embedding = synflow_probe(model, batches, options["input_shape"], dtype)
    if isinstance(probe, Tensor) and probe.is_floating_point():
        probe = probe.to(first.device)
    state = {n: t.detach() for n, t in model.named_parameters()}
    state.update({n: t.detach() for n, t in model.named_buffers()})
    absolute = {n: t.abs().to(dtype) if t.is_floating_point() else t for n, t in state.items()}
    runner = _Probe(model, getattr(context.loss, "logits_fn", None))

    def round_scores(alive: dict[str, Tensor] | None) -> dict[str, Tensor]:
        leaves = {
            n: (absolute[n] if alive is None else absolute[n] * alive[n]).clone().requires_grad_(True) for n in parameters
        }
        values = {f"model.{n}": t for n, t in {**absolute, **leaves}.items()}
        with torch.enable_grad():
            flow = _flow(functional_call(runner, values, (probe,)), dtype)
            grads = torch.autograd.grad(flow, list(leaves.values()), allow_unused=True)
        scores = {
            n: torch.zeros_like(leaf.detach()) if g is None else (g * leaf.detach()).abs_()
            for (n, leaf), g in zip(leaves.items(), grads)
        }
        bad = [n for n, s in scores.items() if not bool(torch.isfinite(s).all())]
        if bad:
            raise ValueError(
                f"non-finite synflow scores for {', '.join(bad)}: use the option dtype='float64' (the default) or "
                "check the weights"
            )
        if alive is None and not any(bool(s.any()) for s in scores.values()):
            raise ValueError(
                f"synflow's flow R = Σ f(1) = {float(flow.detach()):g} does not depend on the selected tensors (every "
                "score is 0): no all-positive path leads from the probe through them to the output. SynFlow cannot "
                "rank this selection; use a data-driven criterion ('snip')"
            )
        return scores

    handle = None
    if embedding is not None:
        handle = embedding.register_forward_hook(lambda module, args, output: torch.ones_like(output))
    try:
        with quiet_run(model, [first.device]):
            return iterate_rounds(round_scores, context, options["rounds"], "synflow", parameters)
    finally:
        if handle is not None:
            handle.remove()
