"""Data-free scoring batches: random batches shaped like one real batch (tensor, tuple/list or dict).

:func:`noise_batches` keeps the batch's structure and replaces its inputs:

* floating tensors become noise of their shape and dtype (standard normal, or uniform on [0, 1));
* token ids become uniform random ids in ``[0, vocab_size)`` (the embedding's range, :func:`vocab_size_of`).
  Token ids are the integer (int16/32/64) entries under the keys :data:`TOKEN_KEYS` of a dict batch, the first
  element of a tuple/list batch, or a bare integer tensor;
* every other entry (attention masks, token type ids, labels, non-tensors) is copied as it is.

A bare or first-element tensor of another non-floating dtype (``uint8`` images, ``bool``) becomes float32 noise,
as before token models were supported. Draws come from one dedicated ``torch.Generator`` seeded with ``seed``
(the global RNG is not touched), in batch order, then entry order.

>>> import torch
>>> batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
>>> noisy = noise_batches(batch, 2, vocab_size=7)
>>> [int(b["input_ids"].max()) < 7 for b in noisy], torch.equal(noisy[0]["attention_mask"], batch["attention_mask"])
([True, True], True)
>>> noise_batches(torch.zeros(3, 4), seed=1)[0].shape
torch.Size([3, 4])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_choice, check_int

__all__ = ["TOKEN_KEYS", "input_embedding", "noise_batches", "vocab_size_of"]

#: Keys of dict batches whose integer tensors are token ids.
TOKEN_KEYS = ("input_ids", "decoder_input_ids")
_ID_DTYPES = (torch.int16, torch.int32, torch.int64)


def input_embedding(model: nn.Module) -> nn.Module | None:
    """The embedding that reads the model's token ids: the ``get_input_embeddings()`` of the model or of its first
    submodule that has one (a Hugging Face model inside a LightningModule), else the first ``nn.Embedding``;
    ``None`` when there is none.

    >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    >>> input_embedding(net)
    Embedding(10, 4)
    """
    for module in model.modules():
        get = getattr(module, "get_input_embeddings", None)
        if callable(get):
            try:
                found = get()
            except (NotImplementedError, AttributeError):
                found = None
            if isinstance(found, nn.Module) and isinstance(getattr(found, "num_embeddings", None), int):
                return found
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


def vocab_size_of(model: nn.Module) -> int | None:
    """The number of token ids the model's input embedding reads (:func:`input_embedding`), or ``None``.

    >>> vocab_size_of(torch.nn.Embedding(10, 4)), vocab_size_of(torch.nn.Linear(2, 2))
    (10, None)
    """
    embedding = input_embedding(model)
    return None if embedding is None else int(embedding.num_embeddings)


def _role(value: Any, *, ids: bool, first: bool) -> str:
    """``"ids"``, ``"noise"`` or ``"copy"`` for one entry (``ids``: at a token-id position; ``first``: the input)."""
    if not isinstance(value, Tensor):
        return "copy"
    if value.is_floating_point():
        return "noise"
    if ids and value.dtype in _ID_DTYPES:
        return "ids"
    return "noise" if first else "copy"


def _plan(like: Any) -> list[tuple[Any, Any, str]]:
    """``(key, value, role)`` of every entry of a batch; the key is None for a bare tensor."""
    if isinstance(like, Tensor):
        return [(None, like, _role(like, ids=True, first=True))]
    if isinstance(like, (tuple, list)) and like:
        return [(i, v, _role(v, ids=i == 0, first=i == 0)) for i, v in enumerate(like)]
    if isinstance(like, Mapping) and like:
        return [(k, v, _role(v, ids=k in TOKEN_KEYS, first=False)) for k, v in like.items()]
    raise TypeError(
        f"`like` must be one batch: a tensor, a non-empty tuple/list or a non-empty dict, got {type(like).__name__}"
    )


def noise_batches(
    like: Any,
    num_batches: int = 1,
    *,
    seed: int = 0,
    distribution: Literal["normal", "uniform"] = "normal",
    vocab_size: int | None = None,
    batch_size: int | None = None,
) -> list[Any]:
    """``num_batches`` random batches with the structure of ``like`` (one real batch), for data-free scoring.

    Args:
        like: a tensor, a tuple/list or a dict batch (module docstring says what becomes noise).
        num_batches: how many batches, ``>= 1``; default 1.
        seed: seed of the dedicated generator; default 0.
        distribution: ``"normal"`` (standard normal, default) or ``"uniform"`` (on [0, 1)) for floating entries.
        vocab_size: token ids are drawn uniformly from ``[0, vocab_size)``; needed when ``like`` holds token ids
            (``vocab_size_of(model)`` gives the embedding's range).
        batch_size: rows of each batch; default: those of ``like``. Entries whose first dimension is ``like``'s
            batch size get this many rows (copied entries repeat their rows cyclically).

    Returns:
        A list of batches of ``like``'s kind (tensor, tuple, list or dict), on ``like``'s devices.

    Raises:
        TypeError: ``like`` is not a batch, or an argument of the wrong type.
        ValueError: token ids without ``vocab_size``, or an argument out of range.

    >>> x, y = noise_batches((torch.zeros(4, 3), torch.arange(4)), batch_size=2, distribution="uniform")[0]
    >>> x.shape, y
    (torch.Size([2, 3]), tensor([0, 1]))
    """
    check_int("num_batches", num_batches, minimum=1)
    check_int("seed", seed)
    check_choice("distribution", distribution, ("normal", "uniform"))
    check_int("vocab_size", vocab_size, minimum=1, allow_none=True)
    check_int("batch_size", batch_size, minimum=1, allow_none=True)
    plan = _plan(like)
    tensors = [v for _, v, _ in plan if isinstance(v, Tensor)]
    if not tensors:
        raise TypeError(f"`like` holds no tensor to shape the noise after: {like!r:.80}")
    if vocab_size is None and any(role == "ids" for _, _, role in plan):
        where = [k for k, _, role in plan if role == "ids"]
        raise ValueError(
            f"`like` holds token ids ({'the tensor' if where == [None] else f'entry {where[0]!r}'}): pass `vocab_size`, "
            "the number of rows of the model's input embedding (`vocab_size_of(model)`), to draw random ids"
        )
    rows = tensors[0].shape[0] if tensors[0].dim() else None
    generator = torch.Generator(device=tensors[0].device).manual_seed(seed)
    draw = torch.randn if distribution == "normal" else torch.rand

    def make(value: Any, role: str) -> Any:
        if not isinstance(value, Tensor):
            return value
        shape = tuple(value.shape)
        resize = batch_size is not None and rows is not None and value.dim() >= 1 and shape[0] == rows
        if resize:
            shape = (batch_size, *shape[1:])
        if role == "copy":
            return value[torch.arange(batch_size, device=value.device) % rows] if resize else value
        if role == "ids":
            out = torch.randint(0, vocab_size, shape, generator=generator, device=generator.device, dtype=value.dtype)
        else:
            dtype = value.dtype if value.is_floating_point() else torch.float32
            out = draw(shape, generator=generator, device=generator.device, dtype=dtype)
        return out.to(value.device)

    batches = []
    for _ in range(num_batches):
        entries = [(key, make(value, role)) for key, value, role in plan]
        if isinstance(like, Tensor):
            batches.append(entries[0][1])
        elif isinstance(like, Mapping):
            batches.append(dict(entries))
        elif hasattr(like, "_fields"):  # a named tuple
            batches.append(type(like)(*(v for _, v in entries)))
        else:
            batches.append(type(like)(v for _, v in entries))
    return batches
