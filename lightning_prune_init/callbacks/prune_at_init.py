"""``PruneAtInitCallback``: prune a LightningModule at initialization, before its first training step.

Lifecycle (Lightning 2.6 ``Trainer._run``; docs/guide.md "Lifecycle"):

* ``__init__``: every setting is checked (:meth:`PruneAtInitCallback._validate_settings`), before anything happens.
* ``setup``: strategies that shard parameters are refused.
* module and callback state restored from ``ckpt_path`` (single device, DDP): :meth:`load_state_dict` only reads
  the layout of the saved state.
* ``strategy.setup``: model on its device, DDP wrapper, optimizers.
* ``on_fit_start``: a restored state is verified against the module (:mod:`.state`) and attached, or, on a fresh
  run, the selection is resolved and everything that needs the module is checked, then: optional
  re-initialization → scoring batches → scores (summed over data-parallel ranks) → masks (rank 0's, broadcast) →
  attached → optional isometry repair → optional sparse execution → logs and density profile. Any error leaves the
  module exactly as it was (no masks, no hooks, the same weights).
* optimizer state restored from ``ckpt_path`` (after ``on_fit_start``).
* ``on_train_start``: pruned entries of every optimizer state tensor zeroed, so a resumed optimizer never moves
  a pruned weight.
* validation / test / predict epochs: the masks are enforced again before their first forward, whatever other
  callbacks wrote through ``.data`` (weight averaging swaps weights this way); ``on_fit_end`` enforces them on the
  final weights. Averaged copies kept by weight-averaging callbacks get the masks too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, Optional, Union

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_prune_init import _compat
from lightning_prune_init._imports import import_path
from lightning_prune_init._validation import check_bool, check_choice, check_int, check_mapping, check_number, check_patterns
from lightning_prune_init.callbacks.averaging import mask_averaged_copies
from lightning_prune_init.callbacks.pruning import notify_prune_stage, prune_transactionally
from lightning_prune_init.callbacks.profile import masks_digest, profile_folder, write_density_profile
from lightning_prune_init.callbacks.settings import INIT_SCHEMES, Init, IsometryRepair, MaskRule, Policies, Scoring, Targets, as_plain
from lightning_prune_init.callbacks.state import build_state, masks_from_weights, read_state, verify_restore
from lightning_prune_init.isometry import IsometryReport
from lightning_prune_init.masks import (
    apply_masks,
    attach_optimizers,
    detach_optimizers,
    enforce_masks_,
    get_masks,
    mark_masks_stale,
    sparsity_report,
    zero_optimizer_state_,
)
from lightning_prune_init.parameters import ParameterSelection, select_parameters
from lightning_prune_init.scoring import check_criterion_options, get_criterion, make_loss
from lightning_prune_init.selection import Collapse, keep_count, parse_pattern

__all__ = ["PruneAtInitCallback", "notify_prune_stage"]

Supervision = Literal["labels", "label_free", "data_free"]
InitScheme = Literal["orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he"]
#: Settings whose change would have given other masks or weights (compared on resume and on a second fit).
_DEFINING = ("sparsity", "criterion", "supervision", "parameters", "scoring", "masking", "init", "isometry")


def _group(value: Any, group: type, argument: str) -> Any:
    """A settings group from itself, a mapping of its fields, or ``None`` (the group's defaults)."""
    if value is None:
        return group()
    if isinstance(value, group):
        return value
    if isinstance(value, Mapping):
        try:
            return group(**value)
        except TypeError as err:
            raise TypeError(f"`{argument}`: {err} (fields: {', '.join(group.__dataclass_fields__)})") from None
    raise TypeError(f"`{argument}` must be a {group.__name__} or a mapping of its fields, got {type(value).__name__}")


class PruneAtInitCallback(Callback):
    r"""Prune the LightningModule at initialization by connection sensitivity (SNIP) and keep it pruned.

    Add it to the ``Trainer``; nothing in the LightningModule changes. The masks are enforced for the whole run
    (exact zeros after every optimizer step, in every validation and every checkpoint), saved bit-packed with
    checksums in this callback's checkpoint state, verified and restored on resume, identical on every DDP rank.

    Args:
        sparsity: fraction of the selected entries removed, in ``[0, 1)``: ``0.9`` keeps ``round(0.1 · m)`` of the
            ``m`` selected entries. Default 0.9, or ``1 − n/m`` with ``masking.pattern="n:m"``.
        criterion: a registered criterion (``"snip"``, the default; ``"grasp"``, ``"synflow"``, ``"iterative_snip"``,
            ``"magnitude"``, ``"random"``) or the import path of your own (docs/criteria.md).
        supervision: ``"labels"`` (default; the batch's targets), ``"label_free"`` (uniform target on real inputs) or
            ``"data_free"`` (uniform target on noise shaped like a real batch).
        parameters: what is pruned, :class:`~lightning_prune_init.callbacks.settings.Targets` (a glob or a list of
            globs is ``include``). Default: the weights of every Linear, Conv, transformers Conv1D and attention
            input projection. Every stage (scoring, init, repair, monitor, reports) uses this one selection.
        scoring: :class:`~lightning_prune_init.callbacks.settings.Scoring`: batches, ``loss_fn``/``logits_fn``,
            criterion options, seeds, noise.
        masking: :class:`~lightning_prune_init.callbacks.settings.MaskRule`: scope, minimum density, N:M pattern,
            sanity ablation.
        init: re-initialize the selected weights before scoring:
            :class:`~lightning_prune_init.callbacks.settings.Init`, or just the scheme (``"orthogonal"``,
            ``"delta-orthogonal"``, ``"vs-lecun"``, ``"vs-glorot"``, ``"vs-he"``). Default ``None``: keep the module's.
        isometry: the data-free approximate isometry repair after pruning: ``True`` (conjugate gradient, seconds),
            an :class:`~lightning_prune_init.callbacks.settings.IsometryRepair` (``{solver: sgd}`` is the authors'
            10,000-step SGD), or ``False`` (default).
        sparse_execution: ``"off"`` (default), ``"auto"`` (switch the masked layers measured faster with sparse
            kernels) or ``"on"`` (every eligible layer); docs/sparse.md.
        policies: :class:`~lightning_prune_init.callbacks.settings.Policies`: layer collapse, dead units, missing
            checkpoint state, density profile.
        verbose: print the density (and repair) tables on rank 0. Default True.

    Logged (every logger, rank 0): ``prune/density``, ``prune/sparsity``, ``prune/density/<parameter>``,
    ``prune/dead_units/<parameter>``; with the repair ``isometry/error_before|error_after|best_possible/<parameter>``.

    >>> cb = PruneAtInitCallback(0.95, init="orthogonal", isometry=True, parameters="net.*")
    >>> cb.sparsity, cb.init.scheme, cb.isometry.solver, cb.parameters.include
    (0.95, 'orthogonal', 'cg', ['net.*'])
    """

    def __init__(
        self,
        sparsity: Optional[float] = None,
        criterion: Union[str, Callable[..., Any]] = "snip",
        supervision: Supervision = "labels",
        parameters: Union[Targets, str, list[str], None] = None,
        scoring: Optional[Scoring] = None,
        masking: Optional[MaskRule] = None,
        init: Union[Init, InitScheme, None] = None,
        isometry: Union[bool, IsometryRepair] = False,
        sparse_execution: Literal["off", "auto", "on"] = "off",
        policies: Optional[Policies] = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self._validate_settings(
            sparsity, criterion, supervision, parameters, scoring, masking, init, isometry, sparse_execution, policies,
            verbose,
        )
        self.selection: ParameterSelection | None = None
        self.isometry_report: IsometryReport | None = None
        self.sparse_report: Any = None
        self.collapse: Collapse | None = None
        self.density_profile_path: str | None = None
        self._masks: dict[str, Tensor] | None = None  # on CPU; the source of truth for checkpoints
        self._pending: Mapping[str, Any] | None = None  # a loaded checkpoint state, verified in on_fit_start
        self._pruned_with: dict[str, Any] | None = None  # the settings the current masks were made with

    # --- settings ------------------------------------------------------------------------------------------
    def _validate_settings(
        self, sparsity: Any, criterion: Any, supervision: Any, parameters: Any, scoring: Any, masking: Any, init: Any,
        isometry: Any, sparse_execution: Any, policies: Any, verbose: Any,
    ) -> None:
        """Check and normalize every setting; raise before anything is stored on a bad one."""
        self.supervision = check_choice("supervision", supervision, ("labels", "label_free", "data_free"))
        self.criterion: str = import_path(criterion, "criterion") if callable(criterion) else criterion
        if not isinstance(self.criterion, str):
            raise TypeError(f"`criterion` must be a criterion name or import path, got {type(criterion).__name__}")
        get_criterion(self.criterion)  # unknown names and paths that do not import are refused here

        if isinstance(parameters, (str, list, tuple)):
            parameters = Targets(include=[parameters] if isinstance(parameters, str) else list(parameters))
        self.parameters: Targets = _group(parameters, Targets, "parameters")
        self.parameters.include = check_patterns("parameters.include", self.parameters.include)
        self.parameters.exclude = check_patterns("parameters.exclude", self.parameters.exclude)
        check_bool("parameters.prune_biases", self.parameters.prune_biases)

        s: Scoring = _group(scoring, Scoring, "scoring")
        check_int("scoring.num_batches", s.num_batches, minimum=1)
        s.loss_fn = import_path(s.loss_fn, "scoring.loss_fn")
        s.logits_fn = import_path(s.logits_fn, "scoring.logits_fn")
        s.options = check_mapping("scoring.options", s.options)
        check_criterion_options(self.criterion, s.options)  # unknown options and bad values are refused here
        check_int("scoring.seed", s.seed)
        check_choice("scoring.noise", s.noise, ("normal", "uniform"))
        check_int("scoring.noise_seed", s.noise_seed)
        check_int("scoring.noise_batch_size", s.noise_batch_size, minimum=1, allow_none=True)
        make_loss(self.supervision, loss_fn=s.loss_fn, logits_fn=s.logits_fn)  # refuses what cannot be honoured
        self.scoring = s

        m: MaskRule = _group(masking, MaskRule, "masking")
        check_choice("masking.scope", m.scope, ("global", "layerwise"))
        check_number("masking.min_density", m.min_density, minimum=0.0, maximum=1.0)
        check_choice("masking.ablation", m.ablation, (None, "shuffle", "random", "reinit", "invert"))
        check_int("masking.ablation_seed", m.ablation_seed)
        self.masking = m
        if m.pattern is not None:
            n, of = parse_pattern(m.pattern)
            if sparsity is not None and not math.isclose(float(sparsity), 1 - n / of):
                raise ValueError(
                    f"`sparsity`={sparsity} conflicts with `masking.pattern`={m.pattern!r}, which keeps {n} of every "
                    f"{of} weights (sparsity {1 - n / of:g}); leave `sparsity` unset or set it to {1 - n / of:g}"
                )
            if m.min_density or m.ablation in ("shuffle", "random"):
                raise ValueError(
                    f"`masking.pattern`={m.pattern!r} fixes the kept count of every group of {of} weights: it cannot "
                    "be combined with `masking.min_density` or the 'shuffle'/'random' ablations"
                )
            sparsity = 1 - n / of
        self.sparsity = check_number(
            "sparsity", 0.9 if sparsity is None else sparsity, minimum=0.0, maximum=1.0, maximum_inclusive=False
        )

        if isinstance(init, str):
            init = Init(scheme=init)  # type: ignore[arg-type]
        self.init: Init | None = None if init is None else _group(init, Init, "init")
        if self.init is not None:
            check_choice("init.scheme", self.init.scheme, INIT_SCHEMES)
            check_number("init.gain", self.init.gain, minimum=0.0, minimum_inclusive=False)
            check_int("init.seed", self.init.seed, allow_none=True)
            check_bool("init.zero_biases", self.init.zero_biases)

        if isinstance(isometry, bool):
            isometry = IsometryRepair() if isometry else None
        self.isometry: IsometryRepair | None = None if isometry is None else _group(isometry, IsometryRepair, "isometry")
        if self.isometry is not None:
            r = self.isometry
            check_int("isometry.steps", r.steps, minimum=0)
            check_number("isometry.lr", r.lr, minimum=0.0, minimum_inclusive=False)
            check_choice("isometry.solver", r.solver, ("sgd", "cg"))
            check_choice("isometry.target", r.target, ("identity", "reachable"))
            check_number("isometry.gain", r.gain, minimum=0.0, minimum_inclusive=False)
            check_number("isometry.tol", r.tol, minimum=0.0, allow_none=True)

        self.sparse_execution = check_choice("sparse_execution", sparse_execution, ("off", "auto", "on"))
        p: Policies = _group(policies, Policies, "policies")
        for name in ("on_layer_collapse", "on_dead_units"):
            check_choice(f"policies.{name}", getattr(p, name), ("warn", "error", "ignore"))
        check_choice("policies.on_missing_state", p.on_missing_state, ("from_weights", "error"))
        check_bool("policies.enforce_every_step", p.enforce_every_step)
        check_bool("policies.save_density_profile", p.save_density_profile)
        self.policies = p
        self.verbose = check_bool("verbose", verbose)

    def config(self) -> dict[str, Any]:
        """The settings as plain values (what ``--print_config`` shows and checkpoints store)."""
        return {
            "sparsity": self.sparsity,
            "criterion": self.criterion,
            "supervision": self.supervision,
            "parameters": as_plain(self.parameters),
            "scoring": as_plain(self.scoring),
            "masking": as_plain(self.masking),
            "init": as_plain(self.init),
            "isometry": as_plain(self.isometry),
            "sparse_execution": self.sparse_execution,
            "policies": as_plain(self.policies),
        }

    def _differences(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The defining settings that differ between ``other`` (saved) and this callback: ``{key: (saved, now)}``."""
        now = self.config()
        return {k: (other.get(k), now[k]) for k in _DEFINING if k in other and other.get(k) != now[k]}

    @property
    def masks(self) -> dict[str, Tensor] | None:
        """The masks chosen (or restored) by this callback, on CPU; ``None`` before pruning."""
        return None if self._masks is None else dict(self._masks)

    # --- Lightning hooks -------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and _compat.shards_parameters(trainer):
            raise MisconfigurationException(
                f"PruneAtInitCallback does not support {type(trainer.strategy).__name__}: it shards parameters, and "
                "masks chosen on shards would be silently wrong. Supported: single device, DDP ('ddp', 'ddp_spawn', "
                "'ddp_notebook', 'ddp_find_unused_parameters_true')."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        attached = get_masks(pl_module)
        if self._pending is not None:
            self._restore(trainer, pl_module)
        elif trainer.ckpt_path is not None and self._masks is None and not attached:
            self._resume_without_state(trainer, pl_module)
        elif attached:
            self._keep_attached(trainer, pl_module, attached)
        else:
            prune_transactionally(self, trainer, pl_module)
        mask_averaged_copies(trainer, self._masks or {})

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning restores optimizer state after on_fit_start: zero its pruned entries now, before the first step
        for optimizer in trainer.optimizers:
            zero_optimizer_state_(optimizer, pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.policies.enforce_every_step:
            mark_masks_stale(pl_module)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        mark_masks_stale(pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        mark_masks_stale(pl_module)

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        mark_masks_stale(pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        enforce_masks_(pl_module)
        detach_optimizers(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        detach_optimizers(pl_module)

    # --- the states a fit can start from ---------------------------------------------------------------------
    def _restore(self, trainer: Trainer, pl_module: LightningModule) -> None:
        source = trainer.ckpt_path
        restored = read_state(self._pending, source)  # type: ignore[arg-type]
        masks = verify_restore(pl_module, restored, source)
        self._pending = None
        self.selection = select_parameters(pl_module, **restored.rule)
        self.isometry_report = None
        changed = self._differences(restored.config)
        if changed:
            rank_zero_warn(
                f"PruneAtInitCallback: the masks of {source!r} are restored as they were; these settings differ from "
                f"the checkpoint's and were not applied (saved, now): {changed}"
            )
        self._pruned_with = restored.config
        self._attach(trainer, pl_module, masks)
        saved = restored.extra.get("sparse_execution")
        if saved is not None or self.sparse_execution != "off":
            from lightning_prune_init.callbacks.sparse_execution import resume_sparse_execution

            self.sparse_report = resume_sparse_execution(trainer, pl_module, saved, self.sparse_execution)
        rank_zero_info(f"PruneAtInitCallback: restored and verified the masks of {source!r} ({self._summary()}).")

    def _keep_attached(self, trainer: Trainer, pl_module: LightningModule, attached: dict[str, Tensor]) -> None:
        if self._pruned_with is not None:
            changed = self._differences(self._pruned_with)
        else:  # masks attached by other means: only the kept fraction can be compared
            total = sum(m.numel() for m in attached.values())
            kept = sum(int(m.sum()) for m in attached.values())
            if self.masking.scope == "layerwise":
                expected = sum(keep_count(m.numel(), self.sparsity) for m in attached.values())
            else:
                expected = keep_count(total, self.sparsity)
            changed = {} if kept == expected else {"sparsity": (round(1 - kept / total, 6), self.sparsity)}
        self._masks = {n: m.detach().to("cpu", copy=True) for n, m in attached.items()}
        attach_optimizers(pl_module, trainer.optimizers)
        if changed:
            rank_zero_warn(
                "PruneAtInitCallback: the module is already pruned; it keeps its masks, and these settings, which "
                f"differ from those that made them, were not applied (then, now): {changed}. Build a new module to "
                "prune it again."
            )
        else:
            rank_zero_info(f"PruneAtInitCallback: the module is already pruned; keeping its masks ({self._summary()}).")

    def _resume_without_state(self, trainer: Trainer, pl_module: LightningModule) -> None:
        selection = select_parameters(pl_module, **as_plain(self.parameters))
        masks = masks_from_weights(
            selection, self.sparsity, self.masking.scope, trainer.ckpt_path, self.policies.on_missing_state
        )
        self.selection = selection
        self._pruned_with = self.config()
        self._attach(trainer, pl_module, masks)

    # --- shared steps ----------------------------------------------------------------------------------------
    def _attach(self, trainer: Trainer, pl_module: LightningModule, masks: Mapping[str, Tensor]) -> None:
        apply_masks(pl_module, masks, optimizers=trainer.optimizers)
        self._masks = {n: m.detach().to("cpu", copy=True) for n, m in masks.items()}
        self._log(trainer)

    def _summary(self) -> str:
        report = sparsity_report(self._masks or {})
        return f"density {report.density:.2%}, {report.kept:,} of {report.total:,} selected weights kept"

    def _profile(self) -> dict[str, dict[str, Any]]:
        report = sparsity_report(self._masks or {})
        dead = self.collapse.dead_units if self.collapse is not None else {}
        return {
            name: {"kept": x.kept, "total": x.total, "density": x.density, "dead_units": dead.get(name, 0)}
            for name, x in report.layers.items()
        }

    def _save_density_profile(self, trainer: Trainer) -> None:
        if not self.policies.save_density_profile or not self._masks:
            return
        folder = profile_folder(trainer)  # collective under DDP: every rank calls it
        if not trainer.is_global_zero:
            return
        if folder is None:
            rank_zero_info("PruneAtInitCallback: no logger and no checkpoint folder; the density profile is kept in "
                           "the callback's checkpoint state only.")
            return
        self.density_profile_path = write_density_profile(folder, masks_digest(self._masks), self.config(), self._profile())

    @rank_zero_only
    def _log(self, trainer: Trainer, metrics: dict[str, float] | None = None) -> None:
        if metrics is None:
            metrics = sparsity_report(self._masks or {}).metrics("prune")
            if self.collapse is not None:
                metrics.update({f"prune/dead_units/{n}": float(k) for n, k in self.collapse.dead_units.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # --- checkpoint state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._masks is None:
            return {}
        return build_state(
            self._masks,
            self._pruned_with or self.config(),
            sparsity_report(self._masks).to_dict(),
            selection=None if self.selection is None else {n: list(e.aliases) for n, e in self.selection.entries.items()},
            density_profile=self._profile(),
            isometry_report=None if self.isometry_report is None else self.isometry_report.to_dict(),
            sparse_execution=self.sparse_report,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # verified in on_fit_start, where the checkpoint's path and the restored module are known
        if state_dict:
            self._pending = state_dict

