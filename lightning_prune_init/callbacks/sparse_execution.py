"""Sparse execution inside a Lightning fit: when the switch happens, so that optimizers and DDP see it.

``Trainer.fit`` runs (Lightning 2.6, ``Trainer._run``): ``setup`` hooks → module and callback state restored from
``ckpt_path`` → ``strategy.setup`` (module on its device, DDP wrapper built on its parameters, optimizers built
by ``configure_optimizers``) → callbacks' ``on_fit_start`` → **optimizer and scheduler state restored** from
``ckpt_path`` → training. Masks are known only in ``on_fit_start`` (chosen there, or restored from the callback's
state), after DDP and the optimizers were built on the dense weights. So :func:`switch_to_sparse_execution`,
called by :class:`~lightning_prune_init.PruneAtInitCallback` at the end of its ``on_fit_start`` (masks attached,
repair done):

1. decides (``"auto"``: rank 0 times the layers, its decisions are broadcast, every rank switches the same
   layers) and switches the layers (:func:`~lightning_prune_init.sparse.enable_sparse_execution`);
2. switches the same layers of the averaged copies that ``WeightAveraging``/``EMAWeightAveraging``/SWA keep (they
   average and swap parameter by parameter; apply the masks to them before), wraps DDP again and builds the
   optimizers again (:func:`lightning_prune_init._compat.rebuild_after_parameters_changed`): they now hold the
   ``nnz``-sized ``weight_values``; the masks of layers left dense are attached to the new optimizers;
3. returns the report as plain types, for the callback's checkpoint state.

On resume, :func:`resume_sparse_execution` switches exactly the layers of the saved report in the same place:
before Lightning restores the (compact) optimizer state into the rebuilt optimizers. A checkpoint saved without
sparse execution is never resumed with it (its optimizer state is dense), and one saved with it always is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_prune_init import _compat
from lightning_prune_init._validation import check_choice, check_mapping
from lightning_prune_init.callbacks.averaging import mask_averaged_copies
from lightning_prune_init.masks import attach_optimizers, detach_optimizers, get_masks
from lightning_prune_init.sparse.api import enable_sparse_execution
from lightning_prune_init.sparse.report import SparseExecutionReport

__all__ = ["SparseExecutionMode", "example_inputs_of", "resume_sparse_execution", "switch_to_sparse_execution"]

SparseExecutionMode = Literal["off", "auto", "on"]


def example_inputs_of(trainer: Trainer, pl_module: LightningModule) -> Any:
    """What to call the module with once to record layer input shapes (``"auto"``).

    ``pl_module.example_input_array`` when set; else the inputs of the first training batch (a tensor batch as
    is, the first element of a tuple/list batch, a dict batch as keyword arguments), on the module's device.

    Raises:
        ValueError: neither is available.

    >>> example_inputs_of(trainer, pl_module).shape  # doctest: +SKIP
    torch.Size([2, 1, 28, 28])
    """
    from lightning_prune_init.callbacks.batches import fetch_batches

    inputs = pl_module.example_input_array
    if inputs is None and _compat.train_data_defined(trainer):
        batch = fetch_batches(trainer, pl_module, 1)[0]
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if inputs is None:
        raise ValueError(
            "sparse_execution='auto' times each layer at its real input shape: set `example_input_array` on the "
            "LightningModule or give a train dataloader, or use sparse_execution='on'"
        )
    if isinstance(inputs, Tensor):
        inputs = inputs.to(pl_module.device)
    return trainer.precision_plugin.convert_input(inputs)


def switch_to_sparse_execution(
    trainer: Trainer,
    pl_module: LightningModule,
    mode: SparseExecutionMode,
    decisions: Optional[Mapping[str, bool]] = None,
    *,
    options: Optional[Mapping[str, Any]] = None,
    verbose: bool = True,
) -> Optional[dict[str, Any]]:
    """Switch the masked layers of ``pl_module`` to sparse execution in ``on_fit_start``; returns the report.

    Args:
        trainer: the running Trainer (its strategy is rebuilt around the new parameters).
        pl_module: the LightningModule, masks attached.
        mode: ``"off"`` (nothing; returns None), ``"auto"`` or ``"on"``.
        decisions: switch exactly these layers (``{parameter name: bool}``), measure nothing.
        options: further arguments of :func:`~lightning_prune_init.sparse.enable_sparse_execution`
            (``threshold``, ``rounds``, ``workload``, ``example_inputs``).
        verbose: print the per-layer table on rank 0.

    Returns:
        ``SparseExecutionReport.to_dict()`` (plain types; rank 0's timings on every rank), or None when off or
        when a resumed run's checkpoint was saved without sparse execution (a warning says so).

    In a callback placed after the pruner (``tests/test_sparse_lightning.py``)::

        def on_fit_start(self, trainer, pl_module):
            self.saved = switch_to_sparse_execution(trainer, pl_module, "auto")

    >>> switch_to_sparse_execution(trainer, pl_module, "on")["layers"]["net.1.weight"]["sparse"]  # doctest: +SKIP
    True
    """
    check_choice("sparse_execution", mode, ("off", "auto", "on"))
    options = dict(check_mapping("options", options) or {})
    if mode == "off" and decisions is None:
        return None
    if decisions is None and trainer.ckpt_path is not None:
        rank_zero_warn(
            f"sparse_execution={mode!r} is not turned on when resuming from a checkpoint saved without it "
            f"({trainer.ckpt_path!r}): its optimizer state is dense. Start a new fit to train sparsely."
        )
        return None
    if decisions is None and mode == "auto":
        options.setdefault("example_inputs", example_inputs_of(trainer, pl_module))
        state = None
        if trainer.is_global_zero:
            state = enable_sparse_execution(pl_module, "auto", **options).to_dict()
        state = trainer.strategy.broadcast(state, src=0)
        report = SparseExecutionReport.from_dict(state)
        if not trainer.is_global_zero:
            enable_sparse_execution(pl_module, "auto", decisions=report.decisions)
    else:
        options.pop("example_inputs", None)
        report = enable_sparse_execution(pl_module, "on" if mode == "off" else mode, decisions=decisions, **options)
    if report.switched:
        _switch_averaged_copies(trainer, pl_module, report.decisions)
        detach_optimizers(pl_module)
        _compat.rebuild_after_parameters_changed(trainer)
        attach_optimizers(pl_module, trainer.optimizers)
    if verbose:
        rank_zero_info(f"PruneAtInitCallback: {report}")
    return report.to_dict()


def _switch_averaged_copies(trainer: Trainer, pl_module: LightningModule, decisions: Mapping[str, bool]) -> None:
    """Switch the same layers of the averaged copies kept by ``WeightAveraging``/``EMAWeightAveraging``/SWA, so that
    their parameters line up with the module's again (they average and swap parameter by parameter)."""
    masks = get_masks(pl_module)
    mask_averaged_copies(trainer, masks)
    for average in _compat.averaged_models(trainer):
        enable_sparse_execution(average, "on", masks=masks, decisions=decisions)


def resume_sparse_execution(
    trainer: Trainer, pl_module: LightningModule, saved: Optional[Mapping[str, Any]], mode: SparseExecutionMode
) -> Optional[dict[str, Any]]:
    """The resume twin of :func:`switch_to_sparse_execution`: switch the layers the saved report switched.

    Call it in ``on_fit_start`` of a resumed run (masks restored and attached). ``saved`` is the stored
    ``to_dict()`` (or None: the checkpoint had no sparse execution, and a ``mode`` other than ``"off"`` is
    refused with a warning, see :func:`switch_to_sparse_execution`). A saved report is followed whatever ``mode``
    says now: the checkpoint's optimizer state is compact for exactly those layers.

    >>> resume_sparse_execution(trainer, pl_module, saved, "on") == saved  # doctest: +SKIP
    True
    """
    if saved is None:
        return switch_to_sparse_execution(trainer, pl_module, mode)
    report = SparseExecutionReport.from_dict(dict(saved))
    if mode != report.mode:
        rank_zero_warn(
            f"sparse_execution={mode!r} now, but the checkpoint was trained with {report.mode!r}: its layers are "
            "switched as they were (the optimizer state in the checkpoint is theirs)"
        )
    switch_to_sparse_execution(trainer, pl_module, report.mode, decisions=report.decisions, verbose=False)
    return dict(saved)
