"""Fetch a few training batches from inside a callback hook, leaving no trace on the training run.

The fit loop sets up its train dataloader only after ``on_fit_start``, so callbacks that need data in
``on_fit_start`` (scoring, probe batches) request their own: the same source the fit loop will use
(``trainer.fit_loop._data_source``: the LightningModule's or the DataModule's ``train_dataloader`` hook, or
the dataloaders passed to ``fit``), processed as the fit loop processes it (distributed sampler injected,
strategy hooks), moved to the device through the strategy (``transfer_batch_to_device`` and
``on_after_batch_transfer`` hooks included).

No trace: torch's global RNG (CPU and the module's CUDA device), Python's ``random``, NumPy's global RNG
and the ``torch.Generator`` of the dataloader and of its samplers are restored afterwards, so the training
run sees the same data order and random streams as without the fetch. The dataloader iterator is shut down.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn

__all__ = ["fetch_batches", "preserve_random_state"]


def _generators(obj: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a dataloader (or sampler) draws from."""
    found: list[torch.Generator] = []
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Generator):
            found.append(item)
            continue
        for attr in ("generator", "sampler", "batch_sampler"):
            child = getattr(item, attr, None)
            if child is not None and not isinstance(child, (int, float, str)):
                stack.append(child)
    return found


@contextlib.contextmanager
def preserve_random_state(device: torch.device | None = None, *objects: Any) -> Iterator[None]:
    """Restore every random state the block may consume.

    Covers torch's CPU RNG and, when ``device`` is a CUDA device, its RNG; Python's ``random``; NumPy's
    global RNG (when NumPy is installed); and the ``torch.Generator`` of each object in ``objects``
    (dataloaders, samplers; their ``generator``/``sampler``/``batch_sampler`` attributes are searched).
    """
    py_state = random.getstate()
    try:
        import numpy as np

        np_state: Any = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        np, np_state = None, None
    gen_states = [(g, g.get_state()) for obj in objects for g in _generators(obj)]
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        if np is not None:
            np.random.set_state(np_state)
        for g, state in gen_states:
            g.set_state(state)


def _request(trainer: Trainer) -> Any:
    source = trainer.fit_loop._data_source
    if not source.is_defined():
        raise ValueError(
            "no train dataloader to fetch batches from: define `train_dataloader` on the LightningModule or the "
            "DataModule, or pass `train_dataloaders` to `Trainer.fit` (or use a data-free option)"
        )
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _request_dataloader

        return _request_dataloader(source)
    except ImportError:  # pragma: no cover - other Lightning versions
        return source.dataloader()


def _process(trainer: Trainer, dataloader: Any) -> Any:
    """Process the dataloader(s) as the fit loop will (samplers, strategy); the raw one if that is unavailable."""
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader
        from lightning.pytorch.trainer.states import RunningStage, TrainerFn
    except ImportError:  # pragma: no cover - other Lightning versions
        return dataloader
    return _process_dataloader(trainer, TrainerFn.FITTING, RunningStage.TRAINING, dataloader)


def _shutdown(iterator: Any) -> None:
    for obj in (iterator, getattr(iterator, "_iterator", None)):
        shutdown = getattr(obj, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()


def fetch_batches(trainer: Trainer, pl_module: LightningModule, num_batches: int) -> list[Any]:
    """The first ``num_batches`` training batches, on ``pl_module``'s device, without disturbing the run.

    Call it from a callback hook during ``fit`` (e.g. ``on_fit_start``) on any rank; each rank gets its own
    shard when the fit loop would use a distributed sampler. Several dataloaders (a dict or list returned by
    ``train_dataloader``) are combined as the fit loop does (``"max_size_cycle"``), so a batch is then a
    dict/list with one batch per dataloader.

    Args:
        trainer: the running ``Trainer``.
        pl_module: the LightningModule (batches are moved to its device by ``trainer.strategy``).
        num_batches: how many batches, ``>= 1``. Fewer are returned (with a warning) when the dataloader is
            shorter.

    Returns:
        A list of batches, each as ``training_step`` would receive it (after ``transfer_batch_to_device`` and
        ``on_after_batch_transfer``).

    Raises:
        ValueError: ``num_batches`` is not a positive integer, there is no train dataloader, or it is empty.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"`num_batches` must be an integer >= 1, got {num_batches!r}")
    source_instance = trainer.fit_loop._data_source.instance
    with preserve_random_state(pl_module.device, source_instance):
        raw = _request(trainer)
        combined = isinstance(raw, CombinedLoader) or isinstance(raw, (dict, list, tuple))
        with preserve_random_state(None, *(raw.flattened if isinstance(raw, CombinedLoader) else [raw])):
            if combined:
                loader = raw if isinstance(raw, CombinedLoader) else CombinedLoader(raw, "max_size_cycle")
                loader.flattened = [_process(trainer, dl) for dl in loader.flattened]
            else:
                loader = _process(trainer, raw)
            with preserve_random_state(None, *(loader.flattened if combined else [loader])):
                iterator = iter(loader)
                batches: list[Any] = []
                try:
                    for _ in range(num_batches):
                        try:
                            item = next(iterator)
                        except StopIteration:
                            break
                        batches.append(item[0] if combined else item)
                finally:
                    _shutdown(iterator)
                    del iterator
        if not batches:
            raise ValueError("the train dataloader yielded no batch")
        if len(batches) < num_batches:
            rank_zero_warn(f"asked for {num_batches} training batches, the train dataloader has only {len(batches)}")
        return [trainer.strategy.batch_to_device(b, pl_module.device) for b in batches]
