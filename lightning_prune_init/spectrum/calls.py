"""How the spectra call a model on a probe batch, read its output, and where the end-to-end Jacobian starts.

Probe batches
    A tensor ``[B, ...]`` is passed as ``model(x)``; a mapping of tensors (a dict batch as Hugging Face
    collators make it: ``{"input_ids": [B, T], "attention_mask": [B, T], ...}``) as ``model(**batch)``, the
    module's own forward. ``forward_fn(model, batch)`` replaces either. Every tensor of a dict with at least one
    dimension has the batch first; other entries are passed along unchanged.
Outputs
    A tensor is used as is; a transformers ``ModelOutput`` or a dict through its ``logits``, else its first
    tensor; a tuple or list through its first tensor.
Where the end-to-end Jacobian starts: the first floating activation
    1. the input itself when it is floating: the tensor batch, or the dict entry named by ``input_key``;
    2. else the output of the model's input embedding: ``get_input_embeddings()`` of the model or of its first
       submodule that defines it (transformers models), when it runs in the forward;
    3. else, for a dict batch without ``input_key``, its only floating entry;
    4. else the output of the first module, in the order modules finish, that receives an integer tensor and
       returns a floating one (an ``nn.Embedding``).
    Token ids cannot be differentiated: for token models the end-to-end Jacobian is ``∂ output / ∂ embedding``.

Attention runs through the math kernel of ``scaled_dot_product_attention`` while spectra are computed
(:func:`math_attention`): the fused CPU/GPU kernels have no second derivative, which the products ``J v`` need.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
>>> ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
>>> find_start(net, ids)
Start(kind='module', key=None, module_name='0')
>>> fn, z0 = start_function(net, ids, find_start(net, ids))
>>> tuple(z0.shape), torch.equal(fn(z0), net(ids))
((2, 3, 4), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ForwardFn",
    "Probe",
    "Start",
    "batch_size",
    "call_model",
    "concat_batches",
    "find_start",
    "input_embedding",
    "map_tensors",
    "math_attention",
    "output_tensor",
    "slice_batch",
    "start_function",
]

#: A probe batch: a tensor ``[B, ...]`` or a mapping whose tensors have the batch first.
Probe = Tensor | Mapping[str, Any]
#: ``forward_fn(model, batch) -> output`` (any output :func:`output_tensor` can read).
ForwardFn = Callable[[nn.Module, Any], Any]


def _batched(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() >= 1


def batch_size(batch: Any, argument: str = "inputs") -> int:
    """The number of examples of a probe batch.

    Raises:
        TypeError: neither a tensor nor a mapping.
        ValueError: no batch dimension, an empty batch, or dict tensors that disagree on it.

    >>> batch_size({"input_ids": torch.zeros(3, 5), "lang": "en"})
    3
    """
    if isinstance(batch, Tensor):
        if batch.dim() < 1 or batch.shape[0] < 1:
            raise ValueError(f"`{argument}` must have a non-empty batch dimension, got shape {tuple(batch.shape)}")
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        sizes = {k: int(v.shape[0]) for k, v in batch.items() if _batched(v)}
        if not sizes or min(sizes.values()) < 1:
            raise ValueError(f"`{argument}` must hold tensors with a non-empty batch dimension first, got {sizes or list(batch)}")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the tensors of `{argument}` must share their first (batch) dimension, got {sizes}")
        return next(iter(sizes.values()))
    raise TypeError(
        f"`{argument}` must be a [B, ...] tensor or a mapping of such tensors (a dict batch), got {type(batch).__name__}"
    )


def map_tensors(batch: Probe, fn: Callable[[Tensor], Tensor]) -> Probe:
    """``fn`` applied to the tensor, or to every tensor of a mapping (other entries kept), as a new batch.

    >>> map_tensors({"x": torch.ones(2), "tag": "a"}, lambda t: 2 * t)
    {'x': tensor([2., 2.]), 'tag': 'a'}
    """
    if isinstance(batch, Tensor):
        return fn(batch)
    return {k: fn(v) if isinstance(v, Tensor) else v for k, v in batch.items()}


def slice_batch(batch: Probe, index: slice) -> Probe:
    """The examples ``index`` of a batch (every tensor with a batch dimension sliced).

    >>> slice_batch({"ids": torch.arange(4), "scale": torch.tensor(2.0)}, slice(0, 2))
    {'ids': tensor([0, 1]), 'scale': tensor(2.)}
    """
    if isinstance(batch, Tensor):
        return batch[index]
    return {k: v[index] if _batched(v) else v for k, v in batch.items()}


def concat_batches(batches: Sequence[Probe]) -> Probe:
    """Batches joined along the batch dimension; for mappings, per key (other entries from the first batch).

    Raises:
        ValueError: mappings with different keys.

    >>> concat_batches([{"ids": torch.tensor([1])}, {"ids": torch.tensor([2])}])
    {'ids': tensor([1, 2])}
    """
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat(list(batches))
    for b in batches[1:]:
        if set(b) != set(first):
            raise ValueError(f"dict batches with different keys cannot be joined: {sorted(first)} and {sorted(b)}")
    return {k: torch.cat([b[k] for b in batches]) if _batched(v) else v for k, v in first.items()}


def default_forward(model: nn.Module, batch: Probe) -> Any:
    """``model(**batch)`` for a mapping, ``model(batch)`` otherwise."""
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def output_tensor(out: Any) -> Tensor:
    """The tensor the spectra differentiate: the output itself, its ``logits`` (a ``ModelOutput`` or dict), else its
    first tensor.

    Raises:
        TypeError: no tensor in the output.

    >>> output_tensor({"loss": torch.tensor(1.0), "logits": torch.ones(2, 3)}).shape
    torch.Size([2, 3])
    """
    if isinstance(out, Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for value in values:
        if isinstance(value, Tensor):
            return value
    raise TypeError(
        f"the model output must be a tensor, or a ModelOutput, dict, tuple or list holding one, to take its Jacobian; "
        f"got {type(out).__name__}: pass `forward_fn=lambda model, batch: ...` returning the tensor to analyse"
    )


def call_model(model: nn.Module, batch: Probe, forward_fn: ForwardFn | None = None) -> Tensor:
    """Run ``forward_fn(model, batch)`` (default :func:`default_forward`) and read the output tensor."""
    return output_tensor((forward_fn or default_forward)(model, batch))


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """``scaled_dot_product_attention`` through its math kernel in the block (differentiable twice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def input_embedding(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of ``get_input_embeddings()`` of ``model`` or of its first submodule that defines it.

    >>> input_embedding(torch.nn.Linear(2, 2)) is None
    True
    """
    names = {id(m): n for n, m in model.named_modules()}
    for module in model.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if not callable(getter):
            continue
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(embedding, nn.Module) and id(embedding) in names:
            return names[id(embedding)], embedding
    return None


@dataclass(frozen=True)
class Start:
    """Where the end-to-end Jacobian starts: the input (``key``: the dict entry, ``None`` for a tensor batch) or
    the output of the module ``module_name`` (its first call)."""

    kind: Literal["input", "module"]
    key: str | None = None
    module_name: str = ""


def _first_calls(model: nn.Module, batch: Probe, forward_fn: ForwardFn | None) -> list[tuple[str, bool, Any]]:
    """``(name, receives an integer tensor, output)`` of each module's first call, in the order calls finish."""
    calls: list[tuple[str, bool, Any]] = []
    seen: set[str] = set()

    def make(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if name not in seen:
                seen.add(name)
                tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
                integer = any(not (t.is_floating_point() or t.is_complex()) for t in tensors)
                calls.append((name, integer, out))

        return hook

    handles = [m.register_forward_hook(make(n), with_kwargs=True) for n, m in model.named_modules() if n]
    try:
        call_model(model, batch, forward_fn)
    finally:
        for h in handles:
            h.remove()
    return calls


def find_start(
    model: nn.Module, batch: Probe, forward_fn: ForwardFn | None = None, input_key: str | None = None
) -> Start:
    """Where the end-to-end Jacobian of ``model`` on ``batch`` starts (module docstring), running the model once
    when the input is not floating.

    Raises:
        ValueError: ``input_key`` is not a key of the batch, or no floating activation is found.
    """
    if isinstance(batch, Mapping) and input_key is not None and input_key not in batch:
        raise ValueError(f"`input_key`={input_key!r} is not a key of the batch; its keys are {list(batch)}")
    x = batch if isinstance(batch, Tensor) else batch.get(input_key) if input_key is not None else None
    if isinstance(x, Tensor) and x.is_floating_point():
        return Start("input", key=None if isinstance(batch, Tensor) else input_key)
    size = batch_size(batch)
    calls = _first_calls(model, batch, forward_fn)
    floating = {n: isinstance(o, Tensor) and o.is_floating_point() and o.dim() >= 1 and o.shape[0] == size for n, _, o in calls}
    embedding = input_embedding(model)
    if embedding is not None and floating.get(embedding[0]):
        return Start("module", module_name=embedding[0])
    if isinstance(batch, Mapping) and input_key is None:
        candidates = [k for k, v in batch.items() if _batched(v) and v.is_floating_point()]
        if len(candidates) == 1:
            return Start("input", key=candidates[0])
    for name, integer, _ in calls:
        if integer and floating[name]:
            return Start("module", module_name=name)
    keys = f" (keys: {list(batch)})" if isinstance(batch, Mapping) else ""
    raise ValueError(
        "cannot find where the end-to-end Jacobian starts: the input is not floating and no module turns integer "
        f"inputs into a floating batch (an embedding){keys}; name the floating input with `input_key`, or pass "
        "`forward_fn` taking the floating input"
    )


def start_function(
    model: nn.Module, batch: Probe, start: Start, forward_fn: ForwardFn | None = None
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``(fn, z0)``: the output as a batched function of the start activation, and that activation on ``batch``.

    For a module start, ``fn(z)`` runs the model with the module's first output replaced by ``z``.
    """
    if start.kind == "input":
        if start.key is None:
            return (lambda z: call_model(model, z, forward_fn)), batch  # type: ignore[return-value]
        key = start.key
        return (lambda z: call_model(model, {**batch, key: z}, forward_fn)), batch[key]  # type: ignore[index]
    module = model.get_submodule(start.module_name)
    captured: list[Tensor] = []
    state: dict[str, Any] = {"z": None, "done": False}

    def hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        if state["done"]:
            return None
        state["done"] = True
        if state["z"] is None:
            captured.append(out.detach().clone())
            return None
        return state["z"]

    def fn(z: Tensor | None) -> Tensor:
        state["z"], state["done"] = z, False
        handle = module.register_forward_hook(hook)
        try:
            return call_model(model, batch, forward_fn)
        finally:
            handle.remove()

    fn(None)
    return fn, captured[0]
