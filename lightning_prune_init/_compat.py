"""The one home of everything that reaches into Lightning's internals (private attributes and functions).

Checked against Lightning 2.6.6 (``LIGHTNING_CHECKED``). Every function degrades to a public path, or says what
it could not do, when an internal is missing, so a newer Lightning fails loudly here and nowhere else.

What is used, and why:

* ``trainer.fit_loop._data_source`` and ``connectors.data_connector._request_dataloader`` /
  ``_process_dataloader``: the fit loop builds its train dataloader only after ``on_fit_start``; callbacks that
  need batches in ``on_fit_start`` request the same source and process it as the fit loop will (distributed
  sampler, strategy hooks).
* ``_shutdown_workers`` of a dataloader iterator: worker processes of the batches fetched early are stopped.
* ``WeightAveraging._average_model`` and ``StochasticWeightAveraging._average_model``: the averaged copies of the
  module, which must hold the masks' zeros too.
* ``DDPStrategy.configure_ddp`` / ``Strategy.setup_optimizers`` (public) after pointing ``strategy.model`` back
  at the LightningModule: wrapping again once parameters were replaced (sparse execution).
"""

from __future__ import annotations

from typing import Any

import lightning
from lightning.pytorch import Trainer
from torch import nn

__all__ = [
    "LIGHTNING_CHECKED",
    "averaged_models",
    "rebuild_after_parameters_changed",
    "process_train_dataloader",
    "request_train_dataloader",
    "shards_parameters",
    "shutdown_iterator",
    "train_data_defined",
    "train_data_source",
]

#: Lightning versions these internals were read from and tested against.
LIGHTNING_CHECKED: tuple[str, ...] = ("2.6.6",)

_SHARDING_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def shards_parameters(trainer: Trainer) -> bool:
    """Whether the trainer's strategy shards parameters (FSDP, DeepSpeed, ModelParallel) or restores the
    checkpoint only after setting up (then masks restored in ``on_fit_start`` would be overwritten)."""
    strategy = trainer.strategy
    return type(strategy).__name__ in _SHARDING_STRATEGIES or bool(strategy.restore_checkpoint_after_setup)


def train_data_source(trainer: Trainer) -> Any:
    """The fit loop's source of training data (``trainer.fit_loop._data_source``)."""
    return trainer.fit_loop._data_source


def train_data_defined(trainer: Trainer) -> bool:
    """Whether the fit has a train dataloader (from ``fit``'s arguments, the DataModule or the module)."""
    return bool(train_data_source(trainer).is_defined())


def request_train_dataloader(trainer: Trainer) -> Any:
    """Call the train dataloader hook as the fit loop would (``_request_dataloader``); raises ``ValueError`` when
    the fit has none."""
    source = train_data_source(trainer)
    if not source.is_defined():
        raise ValueError(
            "no train dataloader to fetch batches from: define `train_dataloader` on the LightningModule or the "
            "DataModule, or pass `train_dataloaders` to `Trainer.fit` (or use a data-free option)"
        )
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _request_dataloader
    except ImportError:  # pragma: no cover - other Lightning versions
        return source.dataloader()
    return _request_dataloader(source)


def process_train_dataloader(trainer: Trainer, dataloader: Any) -> Any:
    """Process a train dataloader as the fit loop will (distributed sampler, strategy); unchanged when the
    internal helper is missing."""
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader
        from lightning.pytorch.trainer.states import RunningStage, TrainerFn
    except ImportError:  # pragma: no cover - other Lightning versions
        return dataloader
    return _process_dataloader(trainer, TrainerFn.FITTING, RunningStage.TRAINING, dataloader)


def shutdown_iterator(iterator: Any) -> None:
    """Stop the worker processes of a dataloader iterator (or of the iterator it wraps)."""
    for obj in (iterator, getattr(iterator, "_iterator", None)):
        shutdown = getattr(obj, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()


def averaged_models(trainer: Trainer) -> list[nn.Module]:
    """The averaged copies of the module kept by weight-averaging callbacks in ``trainer.callbacks``.

    ``WeightAveraging`` (and ``EMAWeightAveraging``) keep an ``AveragedModel`` whose ``.module`` mirrors the
    LightningModule (parameter names included); ``StochasticWeightAveraging`` keeps a deep copy of it. Only copies
    that exist now are returned (``WeightAveraging`` builds its copy in ``setup``, SWA in ``setup``).
    """
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    try:
        from lightning.pytorch.callbacks import WeightAveraging
    except ImportError:  # pragma: no cover - Lightning < 2.6
        WeightAveraging = None  # type: ignore[assignment,misc]
    found: list[nn.Module] = []
    for callback in trainer.callbacks:
        if isinstance(callback, StochasticWeightAveraging):
            module = getattr(callback, "_average_model", None)
        elif WeightAveraging is not None and isinstance(callback, WeightAveraging):
            module = getattr(getattr(callback, "_average_model", None), "module", None)
        else:
            continue
        if isinstance(module, nn.Module):
            found.append(module)
    return found


def lightning_version() -> str:
    """The installed Lightning version string."""
    return lightning.__version__


def rebuild_after_parameters_changed(trainer: Trainer) -> None:
    """Make the DDP wrapper and the optimizers hold the LightningModule's parameters again, after some were
    replaced (sparse execution) in ``on_fit_start``, in the order ``strategy.setup`` uses.

    * DDP (``DDPStrategy`` and its spawn/notebook variants): the old wrapper's gradient hooks are removed
      (``DistributedDataParallel._remove_autograd_hooks``: its reducer would still fire on the parameters that
      stayed, e.g. biases), ``strategy.model`` points back at the LightningModule and ``configure_ddp()`` wraps it
      again (same ``ddp_kwargs``; rank 0's module state is broadcast, as at the first wrap);
    * ``strategy.setup_optimizers(trainer)`` (public) calls ``configure_optimizers`` again;
      ``setup_precision_plugin()`` connects them; their state is moved to the root device
      (``lightning.fabric.utilities.optimizer._optimizers_to_device``).

    Lightning restores a checkpoint's optimizer state after ``on_fit_start``, so a resumed run loads it into the
    rebuilt optimizers.
    """
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        old = strategy.model
        remove_hooks = getattr(old, "_remove_autograd_hooks", None)
        if callable(remove_hooks):
            remove_hooks()
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
        del old
    strategy.setup_optimizers(trainer)
    strategy.setup_precision_plugin()
    try:
        from lightning.fabric.utilities.optimizer import _optimizers_to_device
    except ImportError:  # pragma: no cover - other Lightning versions: optimizers are built on the module's device
        return
    _optimizers_to_device(strategy.optimizers, strategy.root_device)
