"""Probe batches for the data-dependent spectra: the model inputs of a training batch, and noise like an example.

A probe is what the module's forward receives (:mod:`lightning_prune_init.spectrum.calls`): a tensor ``[B, ...]``
or a dict batch. From a training batch: a tensor batch is the probe; a dict batch is the probe, whole (every
tensor sliced to the examples kept; ``pl_module(**batch)`` runs on it); a tuple or list batch gives its element 0
(``(inputs, targets)``). From an example (``example_input_array``), :func:`noise_probe` draws ``N(0, 1)`` noise for
floating tensors and uniform token ids in ``[0, vocabulary)`` for the integer input, and repeats the example's rows
for the other entries (attention masks, ...).

>>> import torch
>>> probe_of(({"input_ids": torch.ones(2, 3, dtype=torch.long)}, torch.zeros(2)))
{'input_ids': tensor([[1, 1, 1],
        [1, 1, 1]])}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init.spectrum.calls import Probe, input_embedding

__all__ = ["noise_probe", "probe_of", "vocabulary_size"]


def probe_of(batch: Any, input_key: str | None = None) -> Probe:
    """The part of a training batch the module's forward receives (module docstring).

    Raises:
        ValueError: ``input_key`` is not a key of a dict batch.
        TypeError: a batch of another kind (use a noise probe or pass the probe yourself).
    """
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (Tensor, Mapping)):
        batch = batch[0]
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        if input_key is not None and input_key not in batch:
            raise ValueError(f"`input_key`={input_key!r} is not a key of the dict batch; its keys are {list(batch)}")
        return dict(batch)
    raise TypeError(
        f"cannot find the inputs in a batch of type {type(batch).__name__}: batches must be a tensor, a dict of "
        "tensors or (inputs, ...); or use probe='noise'"
    )


def vocabulary_size(model: nn.Module) -> int | None:
    """``num_embeddings`` of the model's input embedding (``get_input_embeddings()``, else its first
    ``nn.Embedding``), or ``None`` when it has none.

    >>> vocabulary_size(torch.nn.Sequential(torch.nn.Embedding(7, 2)))
    7
    """
    found = input_embedding(model)
    embedding = found[1] if found is not None else next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    size = getattr(embedding, "num_embeddings", None)
    return int(size) if isinstance(size, int) else None


def noise_probe(
    example: Probe,
    num_examples: int,
    generator: torch.Generator,
    vocabulary: int | None = None,
    input_key: str | None = None,
) -> Probe:
    """A probe of ``num_examples`` examples shaped like ``example`` (its first dimension is the batch).

    Floating tensors become ``N(0, 1)`` noise (float32); the integer input (the tensor itself, or the entry
    ``input_key`` of a dict) becomes uniform ids in ``[0, vocabulary)``; other entries repeat the example's rows.

    Raises:
        ValueError: an integer input and no ``vocabulary``.

    >>> ids = noise_probe(torch.zeros(1, 4, dtype=torch.long), 2, torch.Generator().manual_seed(0), vocabulary=10)
    >>> ids.shape, bool((ids >= 0).all() and (ids < 10).all())
    (torch.Size([2, 4]), True)
    """

    def draw(value: Any, is_input: bool) -> Any:
        if not isinstance(value, Tensor) or value.dim() < 1:
            return value
        shape = (num_examples, *value.shape[1:])
        if value.is_floating_point():
            return torch.randn(shape, generator=generator, dtype=torch.float32)
        if is_input:
            if vocabulary is None:
                raise ValueError(
                    "the noise probe needs random token ids but the model has no input embedding to take their range "
                    "from; use probe='data'"
                )
            return torch.randint(0, vocabulary, shape, generator=generator, dtype=value.dtype)
        rows = torch.arange(num_examples) % value.shape[0]
        return value.detach().cpu()[rows].clone()

    if isinstance(example, Tensor):
        return draw(example, True)
    return {k: draw(v, k == input_key) for k, v in example.items()}
