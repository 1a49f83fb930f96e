"""``PruneAtInitCallback``: prune a LightningModule at initialization, before its first training step.

Lifecycle (Lightning 2.x): ``setup`` refuses strategies that shard parameters; in ``on_fit_start`` (the
model is on its device, wrapped for DDP, its optimizers built, and a checkpoint's state already restored):

* masks restored from the checkpoint (``load_state_dict``) are attached again; nothing is recomputed;
* resuming from a checkpoint that holds no state of this callback (e.g. ``save_weights_only=True``) rebuilds
  the masks from the exact zeros of the restored weights and checks the keep count, or refuses
  (``on_missing_state="error"``); it never prunes again silently;
* masks already attached to the module (a second ``fit``) are kept;
* otherwise: optional re-initialization (``init``) → scoring batches (the train dataloader's first batches, or
  noise shaped like them) → connection sensitivity (scores all-reduced over data-parallel ranks) → masks
  (rank 0's broadcast to all ranks) → attached → optional data-free isometry repair (``isometry``) →
  per-layer density and repair errors logged. Re-initialized and repaired weights are broadcast from rank 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_prune_init import _compat
from lightning_prune_init.ablations import random_masks_like, reinitialize_kept_, shuffle_masks
from lightning_prune_init.init import init_model_
from lightning_prune_init.isometry import IsometryReport, approximate_isometry
from lightning_prune_init.masks import (
    apply_masks,
    attach_optimizers,
    detach_optimizers,
    get_masks,
    pack_masks,
    sparsity_report,
    unpack_masks,
)
from lightning_prune_init.parameters import prunable_parameters
from lightning_prune_init.scoring import (
    check_criterion_options,
    criterion_masks,
    criterion_needs_data,
    get_criterion,
    make_loss,
    noise_batches,
    resolve_callable,
)
from lightning_prune_init.selection import Collapse, check_masks, keep_count, validate_min_density, validate_sparsity

Supervision = Literal["labels", "label_free", "data_free"]
InitScheme = Literal["orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he"]


@dataclass
class IsometryRepair:
    """Settings of the data-free approximate isometry repair (:func:`~lightning_prune_init.approximate_isometry`).

    The defaults are the authors' (plain SGD, lr 0.1, 10,000 steps, target ``I``). ``solver="cg"`` reaches a
    lower objective much faster (docs/benchmarks.md); ``target="reachable"`` lets layers with
    ``fan_in < c_out`` reach 0; ``tol`` stops a layer within ``tol`` of its best possible error.
    """

    steps: int = 10_000
    lr: float = 0.1
    solver: Literal["sgd", "cg"] = "sgd"
    target: Literal["identity", "reachable"] = "identity"
    gain: float = 1.0
    tol: Optional[float] = None

_STATE_FORMAT = 1
_REINIT_SEED_OFFSET = 1_000_003


def notify_prune_stage(trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
    """Tell every callback that implements ``on_prune_stage(trainer, pl_module, stage)`` about a stage.

    Stages, in order: ``"after_init"``, ``"after_pruning"``, ``"after_repair"``.
    """
    for callback in trainer.callbacks:
        hook = getattr(callback, "on_prune_stage", None)
        if callable(hook):
            hook(trainer, pl_module, stage)


class PruneAtInitCallback(Callback):
    r"""Prune the LightningModule at initialization by connection sensitivity (SNIP) and keep it pruned.

    Add it to the ``Trainer``; nothing in the LightningModule changes. Masks are enforced for the whole run
    (exact zeros after every optimizer step and in every checkpoint), saved bit-packed in this callback's
    checkpoint state, restored on resume, identical on every DDP rank.

    Args:
        sparsity: fraction of the prunable weights removed, in ``[0, 1)``. ``0.9`` keeps
            ``round(0.1 · m)`` of the ``m`` prunable entries. Default 0.9.
        scope: ``"global"`` (default; one threshold over all layers, as SNIP) or ``"layerwise"``.
        criterion: scoring criterion by registry name (``"snip"``, default; ``"grasp"``, ``"synflow"``,
            ``"iterative_snip"``, ``"magnitude"``, ``"random"``) or import path of a function with the
            registry's signature (docs/criteria.md).
        criterion_options: extra keyword arguments of the criterion, e.g. ``{rounds: 100}`` for synflow.
        min_density: every prunable tensor keeps at least this fraction of its entries (the total keep count
            stays exact). Default 0.
        ablation: a sanity check of Frankle et al. (2021) applied to the chosen masks: ``"shuffle"`` (each
            layer's mask permuted, same density), ``"random"`` (random masks with the same per-layer
            counts), ``"reinit"`` (kept weights re-drawn, scheme ``init`` or PyTorch's default, from a
            stream seeded by ``seed + 1_000_003``, apart from ``init_seed``'s),
            ``"invert"`` (keep the lowest scores). Default None.
        seed: seed of the ``random`` criterion and of the ablations (same on every rank). Default 0.
        supervision: ``"labels"`` (default; cross-entropy against the batch targets), ``"label_free"``
            (uniform target on real inputs) or ``"data_free"`` (uniform target on noise inputs shaped like a
            real batch, from a generator seeded with ``noise_seed``).
        num_batches: scoring batches per process; signed sensitivities are summed over them (and over
            processes) before the absolute value. Default 1.
        include: glob pattern(s) on parameter names (as ``pl_module.named_parameters()`` yields them)
            selecting what is pruned. Default: the weights of every conv and linear layer.
        exclude: glob pattern(s) removed from the selection, e.g. ``["net.fc3.*"]``.
        prune_biases: also prune conv/linear biases (the official SNIP/SPP code does). Default False.
        loss_fn: ``loss_fn(model, batch) -> scalar`` or its import path, replacing the default loss (for
            modules that do not return logits or batches that are not ``(inputs, targets)``). The model
            passed is the LightningModule.
        noise_seed: seed of the dedicated generator for data-free inputs. Default 0.
        noise_distribution: ``"normal"`` (default) or ``"uniform"`` noise for data-free scoring.
        noise_batch_size: batch size of the noise inputs; default: that of the real batch (or of
            ``example_input_array`` when there is no train dataloader).
        on_layer_collapse: a layer left with no weight: ``"warn"`` (default), ``"error"`` or ``"ignore"``.
        on_dead_units: an output unit left with no input weight (it outputs a constant): ``"ignore"``
            (default; the count is still logged as ``prune/dead_units/<parameter>``), ``"warn"`` or ``"error"``.
        save_density_profile: write the per-parameter density (kept, total, density, dead units) as
            ``prune_density.json`` and ``.csv`` into ``trainer.log_dir`` on rank 0. Default True.
        init: re-initialize every conv and linear weight before scoring (biases zeroed), for layerwise dynamical
            isometry: ``"orthogonal"`` (block-orthogonal for convs, needs ``c_in <= c_out``),
            ``"delta-orthogonal"``, ``"vs-lecun"``, ``"vs-glorot"``, ``"vs-he"``; ``None`` (default) keeps the
            module's own initialization.
        init_gain: gain of the re-initialization (orthogonal: singular values; variance scaling: multiplier of
            the variance). Default 1.
        init_seed: seed of a dedicated generator for the re-initialization; ``None`` (default) draws from the
            global RNG as ``torch.nn.init`` does. Rank 0's result is broadcast under DDP either way.
        isometry: run the data-free approximate isometry repair after pruning: ``True`` for the authors'
            settings, or an :class:`IsometryRepair` (YAML: ``isometry: {solver: cg}``). Default False.
        on_missing_state: resuming from a checkpoint without this callback's state: ``"from_weights"``
            (default; masks are the non-zero pattern of the restored weights, checked against the expected
            keep count) or ``"error"``.
        verbose: print the per-layer density table on rank 0. Default True.

    Logged (every logger, rank 0, at the global step of pruning): ``prune/density``, ``prune/sparsity``,
    ``prune/density/<parameter name>``; with the repair, ``isometry/error_before/<parameter name>``,
    ``isometry/error_after/<parameter name>``, ``isometry/best_possible/<parameter name>``.

    Callbacks that implement ``on_prune_stage(trainer, pl_module, stage)`` (e.g.
    :class:`~lightning_prune_init.SignalPropagationMonitor`) are called after each stage: ``"after_init"``,
    ``"after_pruning"``, ``"after_repair"``.
    """

    def __init__(
        self,
        sparsity: float = 0.9,
        *,
        scope: Literal["global", "layerwise"] = "global",
        criterion: str = "snip",
        criterion_options: Optional[dict[str, Any]] = None,
        min_density: float = 0.0,
        ablation: Optional[Literal["shuffle", "random", "reinit", "invert"]] = None,
        seed: int = 0,
        supervision: Supervision = "labels",
        num_batches: int = 1,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        prune_biases: bool = False,
        loss_fn: str | Callable[[nn.Module, Any], Tensor] | None = None,
        noise_seed: int = 0,
        noise_distribution: Literal["normal", "uniform"] = "normal",
        noise_batch_size: int | None = None,
        on_layer_collapse: Literal["warn", "error", "ignore"] = "warn",
        on_dead_units: Literal["warn", "error", "ignore"] = "ignore",
        save_density_profile: bool = True,
        init: Optional[InitScheme] = None,
        init_gain: float = 1.0,
        init_seed: Optional[int] = None,
        isometry: Union[bool, IsometryRepair] = False,
        on_missing_state: Literal["from_weights", "error"] = "from_weights",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.sparsity = validate_sparsity(sparsity)
        _check_choice("scope", scope, ("global", "layerwise"))
        _check_choice("supervision", supervision, ("labels", "label_free", "data_free"))
        _check_choice("noise_distribution", noise_distribution, ("normal", "uniform"))
        _check_choice("on_layer_collapse", on_layer_collapse, ("warn", "error", "ignore"))
        _check_choice("on_dead_units", on_dead_units, ("warn", "error", "ignore"))
        if ablation is not None:
            _check_choice("ablation", ablation, ("shuffle", "random", "reinit", "invert"))
        self._criterion_fn = get_criterion(criterion)
        if criterion_options is not None and not isinstance(criterion_options, dict):
            raise TypeError(f"`criterion_options` must be a dict, got {type(criterion_options).__name__}")
        check_criterion_options(self._criterion_fn, criterion_options)
        _check_choice("on_missing_state", on_missing_state, ("from_weights", "error"))
        if init is not None:
            _check_choice("init", init, ("orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he"))
        if isinstance(isometry, dict):
            isometry = IsometryRepair(**isometry)
        if not isinstance(isometry, (bool, IsometryRepair)):
            raise TypeError(f"`isometry` must be a bool or an IsometryRepair, got {type(isometry).__name__}")
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"`num_batches` must be an integer >= 1, got {num_batches!r}")
        if noise_batch_size is not None and (not isinstance(noise_batch_size, int) or noise_batch_size < 1):
            raise ValueError(f"`noise_batch_size` must be None or an integer >= 1, got {noise_batch_size!r}")
        self.scope = scope
        self.criterion = criterion
        self.criterion_options = criterion_options
        self.min_density = validate_min_density(min_density)
        self.ablation = ablation
        self.seed = seed
        self.on_dead_units = on_dead_units
        self.save_density_profile = save_density_profile
        self.supervision = supervision
        self.num_batches = num_batches
        self.include = include
        self.exclude = exclude
        self.prune_biases = prune_biases
        self.loss_fn = resolve_callable(loss_fn, "loss_fn")
        make_loss(supervision, loss_fn=self.loss_fn)  # refuses e.g. label_free + loss_fn before anything changes
        self.noise_seed = noise_seed
        self.noise_distribution = noise_distribution
        self.noise_batch_size = noise_batch_size
        self.on_layer_collapse = on_layer_collapse
        self.init = init
        self.init_gain = init_gain
        self.init_seed = init_seed
        self.isometry: IsometryRepair | None = (IsometryRepair() if isometry else None) if isinstance(isometry, bool) else isometry
        self.on_missing_state = on_missing_state
        self.verbose = verbose
        self.isometry_report: IsometryReport | None = None
        self.collapse: Collapse | None = None
        self._masks: dict[str, Tensor] | None = None  # on CPU; the source of truth for checkpoints
        self._restored = False

    # ---------------------------------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, Tensor] | None:
        """The masks chosen (or restored) by this callback, on CPU; ``None`` before pruning."""
        return None if self._masks is None else dict(self._masks)

    def _config(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "scope": self.scope,
            "criterion": self.criterion,
            "criterion_options": self.criterion_options,
            "min_density": self.min_density,
            "ablation": self.ablation,
            "seed": self.seed,
            "supervision": self.supervision,
            "num_batches": self.num_batches,
            "include": self.include,
            "exclude": self.exclude,
            "prune_biases": self.prune_biases,
            "init": self.init,
            "isometry": None if self.isometry is None else asdict(self.isometry),
        }

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = type(trainer.strategy).__name__
        if _compat.shards_parameters(trainer):
            raise MisconfigurationException(
                f"PruneAtInitCallback does not support {strategy}: it shards parameters, and masks chosen on "
                "shards would be silently wrong. Supported: single device, DDP ('ddp', 'ddp_spawn', "
                "'ddp_notebook', 'ddp_find_unused_parameters_true')."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        attached = get_masks(pl_module)
        if self._masks is not None and self._restored:
            self._attach(trainer, pl_module, self._masks)
            rank_zero_info(f"PruneAtInitCallback: restored masks from the checkpoint ({self._summary()}).")
        elif trainer.ckpt_path is not None and self._masks is None:
            self._resume_without_state(trainer, pl_module)
        elif attached:
            self._masks = {n: m.cpu() for n, m in attached.items()}
            attach_optimizers(pl_module, trainer.optimizers)
            rank_zero_info(f"PruneAtInitCallback: the module is already pruned; keeping its masks ({self._summary()}).")
        else:
            self._prune(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        detach_optimizers(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        detach_optimizers(pl_module)

    # ---------------------------------------------------------------------------------------------
    def _prune(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.init is not None:
            generator = None if self.init_seed is None else torch.Generator().manual_seed(self.init_seed)
            init_model_(pl_module, self.init, gain=self.init_gain, zero_biases=True, generator=generator)
            _broadcast_parameters(trainer, pl_module)
        notify_prune_stage(trainer, pl_module, "after_init")
        fn = self._criterion_fn
        batches = self._scoring_batches(trainer, pl_module) if criterion_needs_data(fn) else self._shape_only(trainer, pl_module)
        reduce_fn = None
        if trainer.world_size > 1:
            def reduce_fn(t: Tensor) -> Tensor:
                return trainer.strategy.reduce(t, reduce_op="sum")

        _, masks = criterion_masks(
            pl_module,
            batches,
            criterion=fn,
            sparsity=self.sparsity,
            scope=self.scope,
            min_density=self.min_density,
            invert=self.ablation == "invert",
            on_layer_collapse="ignore",
            supervision=self.supervision,
            loss_fn=self.loss_fn,
            parameters=prunable_parameters(pl_module, self.include, self.exclude, self.prune_biases),
            reduce_fn=reduce_fn,
            generator=torch.Generator().manual_seed(self.seed),
            criterion_options=self.criterion_options,
        )
        if self.ablation == "shuffle":
            masks = shuffle_masks(masks, generator=self.seed)
        elif self.ablation == "random":
            masks = random_masks_like(masks, generator=self.seed)
        masks = self._same_on_all_ranks(trainer, masks)
        # the same checks on every rank, before anything changes
        self.collapse = check_masks(masks, self.on_layer_collapse, self.on_dead_units)
        self._attach(trainer, pl_module, masks)
        if self.ablation == "reinit":
            # a stream apart from init_seed's: with equal seeds the re-draw would repeat the initialization
            reseed = self.seed + _REINIT_SEED_OFFSET
            reinitialize_kept_(pl_module, masks, scheme=self.init or "pytorch-default", generator=reseed)
            _broadcast_parameters(trainer, pl_module)
        self._save_density_profile(trainer)
        notify_prune_stage(trainer, pl_module, "after_pruning")
        if self.verbose:
            rank_zero_info(f"PruneAtInitCallback: pruned to {self._summary()}\n{sparsity_report(self._masks)}")
        if self.isometry is not None:
            self._repair(trainer, pl_module)

    def _repair(self, trainer: Trainer, pl_module: LightningModule) -> None:
        settings = self.isometry
        assert settings is not None
        show_progress = trainer.is_global_zero and trainer.progress_bar_callback is not None
        self.isometry_report = approximate_isometry(pl_module, progress=show_progress, **asdict(settings))
        _broadcast_parameters(trainer, pl_module)
        self._log(trainer, self.isometry_report.metrics("isometry"))
        if self.verbose:
            rank_zero_info(f"PruneAtInitCallback: isometry repair\n{self.isometry_report}")
        notify_prune_stage(trainer, pl_module, "after_repair")

    def _attach(self, trainer: Trainer, pl_module: LightningModule, masks: dict[str, Tensor]) -> None:
        apply_masks(pl_module, masks, optimizers=trainer.optimizers)
        self._masks = {n: m.detach().to("cpu", copy=True) for n, m in masks.items()}
        self._log(trainer)

    def _same_on_all_ranks(self, trainer: Trainer, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        if trainer.world_size == 1:
            return masks
        packed = trainer.strategy.broadcast(pack_masks(masks) if trainer.is_global_zero else None, src=0)
        device = next(iter(masks.values())).device
        received = unpack_masks(packed, device=device)
        differs = received.keys() != masks.keys() or any(not torch.equal(received[n], masks[n]) for n in masks)
        if differs:
            rank_zero_warn(f"PruneAtInitCallback: rank {trainer.global_rank} chose other masks; using rank 0's.")
        return received

    def _scoring_batches(self, trainer: Trainer, pl_module: LightningModule) -> list[Any]:
        from lightning_prune_init.callbacks.batches import fetch_batches

        if self.supervision != "data_free":
            # as the training step receives them: e.g. floating inputs cast to bfloat16 under "bf16-true"
            return [trainer.precision_plugin.convert_input(b) for b in fetch_batches(trainer, pl_module, self.num_batches)]
        like = self._noise_template(trainer, pl_module)
        if self.noise_batch_size is not None:
            like = like.new_empty((self.noise_batch_size, *like.shape[1:]))
        return noise_batches(
            like, self.num_batches, seed=self.noise_seed, distribution=self.noise_distribution
        )

    def _shape_only(self, trainer: Trainer, pl_module: LightningModule) -> list[Tensor] | None:
        """For data-free criteria: one input tensor of the real shape if one can be had (SynFlow reads it)."""
        try:
            return [self._noise_template(trainer, pl_module)]
        except ValueError:
            return None

    def _noise_template(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        from lightning_prune_init.callbacks.batches import fetch_batches

        if _compat.train_data_defined(trainer):
            batch = fetch_batches(trainer, pl_module, 1)[0]
            inputs = batch if isinstance(batch, Tensor) else batch[0] if isinstance(batch, (tuple, list)) else None
        else:
            inputs = pl_module.example_input_array
        if not isinstance(inputs, Tensor):
            raise ValueError(
                "data-free scoring needs the input shape: give a train dataloader whose batches are a tensor or "
                "(inputs, ...), or set `example_input_array` on the LightningModule"
            )
        return trainer.precision_plugin.convert_input(inputs.to(pl_module.device))

    def _resume_without_state(self, trainer: Trainer, pl_module: LightningModule) -> None:
        message = (
            f"resuming from {trainer.ckpt_path!r}, which holds no PruneAtInitCallback state (was it saved with "
            "`save_weights_only=True`, or without this callback?)."
        )
        if self.on_missing_state == "error":
            raise RuntimeError(
                f"PruneAtInitCallback: {message} Refusing to prune again. Resume from a full checkpoint, or set "
                "on_missing_state='from_weights' to rebuild the masks from the zeros of the restored weights."
            )
        params = prunable_parameters(pl_module, self.include, self.exclude, self.prune_biases)
        masks = {n: p.detach() != 0 for n, p in params.items()}
        if self.scope == "global":
            expected = {"all prunable": keep_count(sum(m.numel() for m in masks.values()), self.sparsity)}
            found = {"all prunable": sum(int(m.sum()) for m in masks.values())}
        else:
            expected = {n: keep_count(m.numel(), self.sparsity) for n, m in masks.items()}
            found = {n: int(m.sum()) for n, m in masks.items()}
        if found != expected:
            raise RuntimeError(
                f"PruneAtInitCallback: {message} The non-zero weights ({found}) do not match the keep count of "
                f"sparsity={self.sparsity} ({expected}), so the masks cannot be rebuilt from the weights. Resume "
                "from a full checkpoint (with callback state)."
            )
        rank_zero_warn(f"PruneAtInitCallback: {message} Masks rebuilt from the zeros of the restored weights.")
        self._attach(trainer, pl_module, masks)

    # ---------------------------------------------------------------------------------------------
    def _summary(self) -> str:
        report = sparsity_report(self._masks or {})
        return f"density {report.density:.2%}, {report.kept:,} of {report.total:,} prunable weights kept"

    def _profile(self) -> dict[str, dict[str, Any]]:
        report = sparsity_report(self._masks or {})
        dead = (self.collapse.dead_units if self.collapse is not None else {})
        return {
            name: {"kept": x.kept, "total": x.total, "density": x.density, "dead_units": dead.get(name, 0)}
            for name, x in report.layers.items()
        }

    def _save_density_profile(self, trainer: Trainer) -> None:
        if not self.save_density_profile:
            return
        log_dir = trainer.log_dir  # a collective call (it broadcasts): every rank must make it
        if log_dir is None or not trainer.is_global_zero:
            return
        import csv
        import json
        import os

        profile = self._profile()
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, "prune_density.json"), "w") as f:
            json.dump({"config": self._config(), "layers": profile}, f, indent=2)
        with open(os.path.join(log_dir, "prune_density.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["parameter", "kept", "total", "density", "dead_units"])
            for name, row in profile.items():
                writer.writerow([name, row["kept"], row["total"], f"{row['density']:.6f}", row["dead_units"]])

    @rank_zero_only
    def _log(self, trainer: Trainer, metrics: dict[str, float] | None = None) -> None:
        if metrics is None:
            metrics = sparsity_report(self._masks or {}).metrics("prune")
            if self.collapse is not None:
                metrics.update({f"prune/dead_units/{n}": float(k) for n, k in self.collapse.dead_units.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        if self._masks is None:
            return {}
        return {
            "format": _STATE_FORMAT,
            "masks": pack_masks(self._masks),
            "config": self._config(),
            "report": sparsity_report(self._masks).to_dict(),
            "density_profile": self._profile(),
            "isometry_report": None if self.isometry_report is None else self.isometry_report.to_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("format") != _STATE_FORMAT:
            raise ValueError(f"unknown PruneAtInitCallback state format {state_dict.get('format')!r}")
        self._masks = unpack_masks(state_dict["masks"])
        self._restored = True
        saved = state_dict.get("config", {})
        changed = {k: (v, getattr(self, k)) for k, v in saved.items() if getattr(self, k, v) != v}
        if changed:
            rank_zero_warn(
                "PruneAtInitCallback: the checkpoint's masks are restored as they were; these settings differ "
                f"from the checkpoint's and are ignored (saved, now): {changed}"
            )


@torch.no_grad()
def _broadcast_parameters(trainer: Trainer, pl_module: LightningModule) -> None:
    """Make every rank hold rank 0's parameters (after a re-initialization or a repair)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        for p in pl_module.parameters():
            torch.distributed.broadcast(p.data, src=0)


def _check_choice(argument: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{argument}` must be one of {', '.join(map(repr, choices))}; got {value!r}")

