"""The fresh pruning of a fit, as one transaction: check everything, then init → score → mask → repair, or nothing.

Called by :meth:`PruneAtInitCallback.on_fit_start` when there is nothing to restore. Order:

1. resolve the selection once (:func:`~lightning_prune_init.select_parameters`); fetch the scoring batches (data
   or noise shaped like it); check everything that needs the module before any weight changes: the loss on one
   batch, the ``min_density`` floors against the keep count, the N:M pattern against every selected tensor;
2. snapshot the tensors the next steps may write (the selected ones and the other parameters of their modules);
3. re-initialize (``init``), score, select, attach the masks, apply an ablation, repair (``isometry``), switch to
   sparse execution; weights that were changed are broadcast from rank 0 under DDP;
4. on any error: the masks and hooks attached in this call are removed and the snapshot is written back, so the
   module is exactly as before and a corrected retry prunes normally; the error is raised again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_prune_init import _compat
from lightning_prune_init.ablations import random_masks_like, reinitialize_kept_, shuffle_masks
from lightning_prune_init.callbacks.batches import fetch_batches
from lightning_prune_init.callbacks.settings import as_plain
from lightning_prune_init.init import init_model_
from lightning_prune_init.isometry import approximate_isometry
from lightning_prune_init.masks import get_masks, pack_masks, remove_masks, sparsity_report, unpack_masks
from lightning_prune_init.parameters import ParameterSelection, select_parameters
from lightning_prune_init.scoring import (
    check_scoring_input,
    criterion_masks,
    get_criterion,
    make_loss,
    noise_batches,
    vocab_size_of,
)
from lightning_prune_init.selection import check_masks, parse_pattern
from lightning_prune_init.selection.patterns import pattern_misfits
from lightning_prune_init.selection.select import check_floors_fit

if TYPE_CHECKING:
    from lightning_prune_init.callbacks.prune_at_init import PruneAtInitCallback

__all__ = ["notify_prune_stage", "prune_transactionally"]

_REINIT_SEED_OFFSET = 1_000_003


def notify_prune_stage(trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
    """Tell every callback that implements ``on_prune_stage(trainer, pl_module, stage)`` about a stage.

    Stages, in order: ``"after_init"``, ``"after_pruning"``, ``"after_repair"``.
    """
    for callback in trainer.callbacks:
        hook = getattr(callback, "on_prune_stage", None)
        if callable(hook):
            hook(trainer, pl_module, stage)


def prune_transactionally(cb: PruneAtInitCallback, trainer: Trainer, pl_module: LightningModule) -> None:
    """Prune ``pl_module`` with ``cb``'s settings, or leave it exactly as it was (module docstring)."""
    selection = select_parameters(pl_module, **as_plain(cb.parameters))
    for note in selection.notes:
        rank_zero_info(f"PruneAtInitCallback: {note}")
    batches = _scoring_batches(cb, trainer, pl_module)
    _check_before_changes(cb, pl_module, selection, batches)
    snapshot = _snapshot(pl_module, selection)
    try:
        _prune(cb, trainer, pl_module, selection, batches, list(snapshot))
    except BaseException:
        _rollback(cb, pl_module, snapshot)
        raise


# --- before anything changes ---------------------------------------------------------------------------------
def _scoring_batches(cb: PruneAtInitCallback, trainer: Trainer, pl_module: LightningModule) -> list[Any] | None:
    fn = get_criterion(cb.criterion)
    needs_data = getattr(fn, "needs_data", True)
    has_data = _compat.train_data_defined(trainer)
    if not needs_data:  # data-free criteria read at most the shape of one input
        return [_template(trainer, pl_module)] if has_data or _example(pl_module) is not None else None
    if cb.supervision != "data_free":
        return [trainer.precision_plugin.convert_input(b) for b in fetch_batches(trainer, pl_module, cb.scoring.num_batches)]
    return noise_batches(
        _template(trainer, pl_module),
        cb.scoring.num_batches,
        seed=cb.scoring.noise_seed,
        distribution=cb.scoring.noise,
        vocab_size=vocab_size_of(pl_module),
        batch_size=cb.scoring.noise_batch_size,
    )


def _example(pl_module: LightningModule) -> Any:
    return getattr(pl_module, "example_input_array", None)


def _template(trainer: Trainer, pl_module: LightningModule) -> Any:
    """One real batch (inputs of the train dataloader), or ``example_input_array``, on the module's device."""
    if _compat.train_data_defined(trainer):
        batch = fetch_batches(trainer, pl_module, 1)[0]
    else:
        batch = _example(pl_module)
        if batch is None:
            raise ValueError(
                "data-free scoring needs the shape of the inputs: give a train dataloader, or set "
                "`example_input_array` on the LightningModule (a tensor, or a dict batch for token models)"
            )
        batch = trainer.strategy.batch_to_device(batch, pl_module.device)
    return trainer.precision_plugin.convert_input(batch)


def _check_before_changes(
    cb: PruneAtInitCallback, pl_module: LightningModule, selection: ParameterSelection, batches: list[Any] | None
) -> None:
    m = cb.masking
    if m.min_density and m.scope == "global":
        check_floors_fit([e.numel for e in selection.entries.values()], cb.sparsity, m.min_density, prefix="masking.")
    if m.pattern is not None:
        _, group = parse_pattern(m.pattern)
        misfits = pattern_misfits(m.pattern, {e.name: e.shape for e in selection.entries.values()}, selection)
        bad = [f"{name} ({why})" for name, why in misfits.items()]
        if bad:
            raise ValueError(
                f"`masking.pattern`={m.pattern!r} needs every selected weight's input dimension to be a multiple of "
                f"{group}; not: {', '.join(bad)}. `exclude` them, or use unstructured sparsity"
            )
    if batches and getattr(get_criterion(cb.criterion), "needs_data", True):
        loss = make_loss(cb.supervision, loss_fn=cb.scoring.loss_fn, logits_fn=cb.scoring.logits_fn)
        check_scoring_input(pl_module, batches[0], loss)


# --- the transaction ---------------------------------------------------------------------------------------------
def _snapshot(pl_module: LightningModule, selection: ParameterSelection) -> dict[str, Tensor]:
    """CPU copies of the selected tensors and of the other parameters of the modules that own them."""
    owners = {e.layer for e in selection.entries.values()}
    names = {n for n in selection} | {
        f"{owner}.{attr}" if owner else attr
        for owner in owners
        for attr, _ in (pl_module.get_submodule(owner) if owner else pl_module).named_parameters(recurse=False)
    }
    params = dict(pl_module.named_parameters())
    return {n: params[n].detach().to("cpu", copy=True) for n in params if n in names}


@torch.no_grad()
def _rollback(cb: PruneAtInitCallback, pl_module: LightningModule, snapshot: dict[str, Tensor]) -> None:
    if cb.sparse_execution != "off":  # also a switch that failed half-way
        from lightning_prune_init.sparse import disable_sparse_execution

        disable_sparse_execution(pl_module)
    if get_masks(pl_module):
        remove_masks(pl_module)
    params = dict(pl_module.named_parameters())
    for name, value in snapshot.items():
        params[name].copy_(value.to(params[name].device))
    cb.selection = None
    cb._masks = None
    cb._pruned_with = None
    cb.isometry_report = None
    cb.sparse_report = None
    cb.collapse = None


def _broadcast(trainer: Trainer, pl_module: LightningModule, names: list[str]) -> None:
    """Make every rank hold rank 0's values of ``names`` (after a re-initialization or a repair)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        params = dict(pl_module.named_parameters())
        with torch.no_grad():
            for name in names:
                torch.distributed.broadcast(params[name].data, src=0)


def _same_on_all_ranks(trainer: Trainer, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    if trainer.world_size == 1:
        return masks
    packed = trainer.strategy.broadcast(pack_masks(masks) if trainer.is_global_zero else None, src=0)
    device = next(iter(masks.values())).device
    received = {n: m.to(device) for n, m in unpack_masks(packed).items()}
    if received.keys() != masks.keys() or any(not torch.equal(received[n], masks[n]) for n in masks):
        rank_zero_warn(f"PruneAtInitCallback: rank {trainer.global_rank} chose other masks; using rank 0's.")
    return received


def _prune(
    cb: PruneAtInitCallback,
    trainer: Trainer,
    pl_module: LightningModule,
    selection: ParameterSelection,
    batches: list[Any] | None,
    written: list[str],
) -> None:
    cb.selection = selection  # the monitor reads it from the first stage on
    if cb.init is not None:
        generator = None if cb.init.seed is None else torch.Generator().manual_seed(cb.init.seed)
        init_model_(
            pl_module, cb.init.scheme, cb.init.gain, parameters=selection, zero_biases=cb.init.zero_biases,
            generator=generator,
        )
        _broadcast(trainer, pl_module, written)
    notify_prune_stage(trainer, pl_module, "after_init")

    def reduce_fn(t: Tensor) -> Tensor:
        return trainer.strategy.reduce(t, reduce_op="sum")

    m, s = cb.masking, cb.scoring
    _, masks = criterion_masks(
        pl_module,
        batches,
        criterion=cb.criterion,
        sparsity=cb.sparsity,
        parameters=selection,
        scope=m.scope,
        min_density=m.min_density,
        invert=m.ablation == "invert",
        pattern=m.pattern,
        supervision=cb.supervision,
        loss_fn=s.loss_fn,
        logits_fn=s.logits_fn,
        reduce_fn=reduce_fn if trainer.world_size > 1 else None,
        generator=torch.Generator().manual_seed(s.seed),
        criterion_options=s.options,
        on_layer_collapse="ignore",
    )
    if m.ablation == "shuffle":
        masks = shuffle_masks(masks, generator=m.ablation_seed)
    elif m.ablation == "random":
        masks = random_masks_like(masks, generator=m.ablation_seed)
    masks = _same_on_all_ranks(trainer, masks)
    cb.collapse = check_masks(masks, cb.policies.on_layer_collapse, cb.policies.on_dead_units)  # same on every rank
    cb._pruned_with = cb.config()
    cb._attach(trainer, pl_module, masks)
    if m.ablation == "reinit":
        scheme = cb.init.scheme if cb.init is not None else "pytorch-default"
        reinitialize_kept_(pl_module, masks, scheme=scheme, generator=m.ablation_seed + _REINIT_SEED_OFFSET)
        _broadcast(trainer, pl_module, written)
    cb._save_density_profile(trainer)
    notify_prune_stage(trainer, pl_module, "after_pruning")
    if cb.verbose:
        rank_zero_info(
            f"PruneAtInitCallback: pruned to {cb._summary()}\n{sparsity_report(cb._masks or {}, parameters=selection)}"
        )
    if cb.isometry is not None:
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        cb.isometry_report = approximate_isometry(pl_module, parameters=selection, progress=show, **as_plain(cb.isometry))
        _broadcast(trainer, pl_module, written)
        cb._log(trainer, cb.isometry_report.metrics("isometry"))
        if cb.verbose:
            rank_zero_info(f"PruneAtInitCallback: isometry repair\n{cb.isometry_report}")
        notify_prune_stage(trainer, pl_module, "after_repair")
    if cb.sparse_execution != "off":
        from lightning_prune_init.callbacks.sparse_execution import switch_to_sparse_execution

        cb.sparse_report = switch_to_sparse_execution(trainer, pl_module, cb.sparse_execution, verbose=cb.verbose)
