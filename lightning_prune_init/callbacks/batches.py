"""Fetch a few training batches from inside a callback hook, leaving no trace on the training run.

The fit loop sets up its train dataloader only after ``on_fit_start``, so callbacks that need data in
``on_fit_start`` (scoring, probe batches) request their own: the same source the fit loop will use (the
LightningModule's or the DataModule's ``train_dataloader`` hook, or the dataloaders passed to ``fit``), processed
as the fit loop processes it (distributed sampler injected, strategy hooks), moved to the device through the
strategy (``transfer_batch_to_device`` and ``on_after_batch_transfer`` hooks included). The Lightning internals
this needs live in :mod:`lightning_prune_init._compat`.

No trace: torch's global RNG (CPU and the module's CUDA device), Python's ``random``, NumPy's global RNG
and the ``torch.Generator`` of the dataloader and of its samplers are restored afterwards, so the training
run sees the same data order and random streams as without the fetch. The dataloader iterator is shut down.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn

from lightning_prune_init import _compat
from lightning_prune_init._quiet import preserve_random_state
from lightning_prune_init._validation import check_int

__all__ = ["fetch_batches"]


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
    check_int("num_batches", num_batches, minimum=1)
    source_instance = _compat.train_data_source(trainer).instance
    with preserve_random_state([pl_module.device], [source_instance]):
        raw = _compat.request_train_dataloader(trainer)
        combined = isinstance(raw, CombinedLoader) or isinstance(raw, (dict, list, tuple))
        with preserve_random_state((), raw.flattened if isinstance(raw, CombinedLoader) else [raw]):
            if combined:
                loader = raw if isinstance(raw, CombinedLoader) else CombinedLoader(raw, "max_size_cycle")
                loader.flattened = [_compat.process_train_dataloader(trainer, dl) for dl in loader.flattened]
            else:
                loader = _compat.process_train_dataloader(trainer, raw)
            with preserve_random_state((), loader.flattened if combined else [loader]):
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
                    _compat.shutdown_iterator(iterator)
                    del iterator
        if not batches:
            raise ValueError("the train dataloader yielded no batch")
        if len(batches) < num_batches:
            rank_zero_warn(f"asked for {num_batches} training batches, the train dataloader has only {len(batches)}")
        return [trainer.strategy.batch_to_device(b, pl_module.device) for b in batches]
