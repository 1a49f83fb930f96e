"""``SignalPropagationMonitor``: log Jacobian singular values and per-layer density during a fit.

When it logs
    * At fit start. With a ``PruneAtInitCallback`` in ``trainer.callbacks``, at each stage it announces
      through ``on_prune_stage``: ``after_init`` (before pruning), ``after_pruning``, ``after_repair``.
      Without one, once, as stage ``fit_start``. (A run resumed with restored masks announces no stage.)
    * During training, stage ``train``, every ``every_n_steps`` optimizer steps: before the training step
      of each batch whose ``trainer.global_step`` is a multiple of ``every_n_steps``, i.e. with the weights
      after ``global_step`` optimizer steps. Step 0 is included, so the ``train`` curves start from the
      state training starts from.

Which layers
    The pruner's selection: with a ``PruneAtInitCallback`` in ``trainer.callbacks``, its ``selection``
    (a :class:`~lightning_prune_init.parameters.ParameterSelection`); otherwise (or while the pruner has none) the
    monitor's own ``include``/``exclude``, resolved once. The spectra and the densities use the same list.

Tag names (stable; ``<stage>`` is one of ``after_init``, ``after_pruning``, ``after_repair``, ``fit_start``,
``train``; ``<scope>`` one of ``weights``, ``layerwise``; ``<layer>`` a module name such as ``net.1``;
``<stat>`` one of ``mean``, ``std``, ``min``, ``max``, ``cond``, ``mean_sq``):

=============================================  ============  ==========================================
tag                                            kind          value
=============================================  ============  ==========================================
``jsv/<stage>/<scope>/<layer>/<stat>``         scalar        statistic of the layer's singular values
``jsv/<stage>/end_to_end/<stat>``              scalar        statistic of the input→output Jacobian
``density/<stage>/<layer>``                    scalar        kept fraction of the layer's weight
``jsv/<stage>/<scope>/<layer>/values``         histogram     all singular values (exact method only)
``jsv/<stage>/end_to_end/values``              histogram     all singular values (exact method only)
``jsv/<stage>/layers``                         figure        density and singular-value spread per layer
=============================================  ============  ==========================================

The step of every entry is ``trainer.global_step``. Scalars go to every logger in ``trainer.loggers``;
histograms and figures only to ``TensorBoardLogger`` (a warning, once, names the loggers that get scalars
only). Density is the mask's kept fraction, or the fraction of non-zero entries when no mask is attached.

Monitoring leaves no trace on training: it runs on global rank 0 only, quietly (eval mode, every module's mode and
every random stream restored), under ``torch.no_grad()`` with its own ``torch.Generator``; it writes no ``.grad``
and no batch-norm statistics. The probe (``num_examples`` examples of the first training batches, all tensors of a
dict batch, or noise like ``example_input_array``) is taken once and saved in the callback's checkpoint state, so
curves stay comparable across a resume. Token models (dict batches, ``forward(**batch)``, ``ModelOutput``
outputs) work as they are: see docs/monitoring.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_prune_init import _compat
from lightning_prune_init._imports import resolve_callable
from lightning_prune_init._quiet import preserve_random_state
from lightning_prune_init._validation import check_bool, check_choice, check_int, check_mapping, check_patterns
from lightning_prune_init.callbacks.batches import fetch_batches
from lightning_prune_init.callbacks.prune_at_init import PruneAtInitCallback
from lightning_prune_init.parameters import ParameterSelection, select_parameters
from lightning_prune_init.spectrum import METHODS, SCOPES, SpectrumStats, jacobian_singular_values
from lightning_prune_init.spectrum import report
from lightning_prune_init.spectrum.calls import Probe, batch_size, concat_batches, map_tensors, slice_batch
from lightning_prune_init.spectrum.probes import noise_probe, probe_of, vocabulary_size
from lightning_prune_init.spectrum.tracing import select_keys, selected_layers

__all__ = ["SignalPropagationMonitor", "STAGES"]

#: Stages a ``PruneAtInitCallback`` announces, in order, plus ``fit_start`` and ``train``.
STAGES: tuple[str, ...] = ("after_init", "after_pruning", "after_repair", "fit_start", "train")
_STATE_FORMAT = 2  # 1: the probe was always a tensor; 2: a tensor or a dict batch
_SPECTRUM_KWARGS = ("max_exact_dim", "max_exact_numel", "power_iters", "num_probes", "lanczos_steps", "lanczos_probes")


class SignalPropagationMonitor(Callback):
    r"""Log Jacobian singular values (weights, layerwise, end to end) and per-layer density.

    Args:
        every_n_steps: log stage ``train`` every this many optimizer steps (step 0 included); ``None`` or
            ``0``: fit-start stages only. Default 100.
        scopes: which of ``"weights"``, ``"layerwise"``, ``"end_to_end"`` to compute. Default all three.
        num_examples: probe examples for the data-dependent scopes. Default 8.
        layers: glob pattern(s) on layer (module) names, e.g. ``"net.*"``, choosing the layers reported.
            Default: every selected layer.
        method: ``"exact"``, ``"estimate"`` or ``"auto"`` (default; exact for small Jacobians), see
            :func:`~lightning_prune_init.spectrum.jacobian_singular_values`.
        probe: ``"data"`` (default; the first training batches) or ``"noise"`` (like
            ``pl_module.example_input_array``: ``N(0, 1)`` for floating tensors, uniform token ids for the integer
            input, from a generator seeded with ``seed``). ``"data"`` falls back to noise, with a warning, when there
            is no train dataloader.
        input_key: for dict batches, the entry the end-to-end Jacobian starts from (a floating entry; an integer one
            starts it at the input embedding's output). Default: found automatically (the embedding output of a
            token model). The module's forward always receives the whole dict batch (``pl_module(**batch)``).
        forward_fn: ``forward_fn(pl_module, probe) -> output`` or its import path; default ``pl_module(probe)``, or
            ``pl_module(**probe)`` for a dict probe. Outputs that are not tensors are read through ``logits``.
        include, exclude: glob patterns on parameter names choosing the layers when no ``PruneAtInitCallback``
            gives its selection (default: weights of every linear, conv, transformers ``Conv1D`` and attention
            input projection).
        histograms: log histograms of the exact singular values to TensorBoard. Default True.
        figures: log the per-layer figure to TensorBoard. Default True.
        seed: seed of the probe noise and of the estimators' random vectors. Default 0.
        spectrum_kwargs: further keyword arguments of ``jacobian_singular_values`` (``max_exact_dim``,
            ``max_exact_numel``, ``power_iters``, ``num_probes``, ``lanczos_steps``, ``lanczos_probes``).

    The last results are kept in :attr:`last_results` (``{scope: {layer: SpectrumStats}}``) and
    :attr:`last_density` on rank 0.

    >>> monitor = SignalPropagationMonitor(every_n_steps=50, scopes=["end_to_end"], num_examples=4)
    >>> monitor.scopes, monitor.every_n_steps
    (('end_to_end',), 50)
    """

    def __init__(
        self,
        every_n_steps: int | None = 100,
        scopes: Sequence[str] = ("weights", "layerwise", "end_to_end"),
        num_examples: int = 8,
        layers: str | Sequence[str] | None = None,
        method: Literal["exact", "estimate", "auto"] = "auto",
        probe: Literal["data", "noise"] = "data",
        input_key: str | None = None,
        forward_fn: str | Callable[[LightningModule, Any], Any] | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        histograms: bool = True,
        figures: bool = True,
        seed: int = 0,
        spectrum_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=0, allow_none=True) or 0
        scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        if not scopes or any(s not in SCOPES for s in scopes):
            raise ValueError(f"`scopes` must be a non-empty list of {SCOPES}, got {scopes!r}")
        self.scopes = scopes
        self.num_examples = check_int("num_examples", num_examples, minimum=1)
        self.layers = check_patterns("layers", layers)
        self.method = check_choice("method", method, METHODS)
        self.probe = check_choice("probe", probe, ("data", "noise"))
        if input_key is not None and not isinstance(input_key, str):
            raise TypeError(f"`input_key` must be the name of a dict batch entry or None, got {input_key!r}")
        self.input_key = input_key
        self.forward_fn: Callable | None = resolve_callable(forward_fn, "forward_fn")
        self.include = check_patterns("include", include)
        self.exclude = check_patterns("exclude", exclude)
        self.histograms = check_bool("histograms", histograms)
        self.figures = check_bool("figures", figures)
        self.seed = check_int("seed", seed)
        self.spectrum_kwargs = check_mapping("spectrum_kwargs", spectrum_kwargs) or {}
        unknown = set(self.spectrum_kwargs) - set(_SPECTRUM_KWARGS)
        if unknown:
            raise ValueError(f"`spectrum_kwargs` accepts {list(_SPECTRUM_KWARGS)}, got unknown {sorted(unknown)}")
        self.last_results: dict[str, dict[str, SpectrumStats]] = {}
        self.last_density: dict[str, float] = {}
        self.stage_results: dict[str, dict[str, dict[str, SpectrumStats]]] = {}
        self._probe: Probe | None = None  # num_examples examples, on CPU
        self._selection: ParameterSelection | None = None  # the monitor's own, built once
        self._warned_rule = False
        self._last_train_step = -1
        self._warned_loggers = False

    # --- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and _compat.shards_parameters(trainer):
            raise MisconfigurationException(
                f"SignalPropagationMonitor does not support {type(trainer.strategy).__name__}: it runs the module on "
                "global rank 0 alone, which needs the full parameters on that rank. Supported: single device and DDP."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if _pruner(trainer) is None:
            self.log_stage(trainer, pl_module, "fit_start")

    def on_prune_stage(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Called by ``PruneAtInitCallback`` after re-init (``after_init``), pruning and the repair."""
        self.log_stage(trainer, pl_module, stage)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_train_step:
            self._last_train_step = step
            self.log_stage(trainer, pl_module, "train")

    def state_dict(self) -> dict[str, Any]:
        return {"format": _STATE_FORMAT, "probe": self._probe, "last_train_step": self._last_train_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("format") not in (1, _STATE_FORMAT):
            raise ValueError(f"unknown SignalPropagationMonitor state format {state_dict.get('format')!r}")
        self._probe = state_dict.get("probe")
        self._last_train_step = int(state_dict.get("last_train_step", -1))

    # --- work ---------------------------------------------------------------------------------------
    def log_stage(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Compute and log everything for ``stage`` at ``trainer.global_step`` (global rank 0 only)."""
        if not isinstance(stage, str) or not stage or "/" in stage:
            raise ValueError(f"`stage` must be a non-empty name without '/', e.g. one of {STAGES}; got {stage!r}")
        if not trainer.is_global_zero:
            return
        with preserve_random_state([pl_module.device]):
            results, density = self.compute(trainer, pl_module)
        self.last_results, self.last_density = results, density
        self.stage_results[stage] = results  # "train" keeps only the latest
        self._log(trainer, stage, results, density)

    def summary(self) -> str:
        """A table of singular-value statistics (mean ± std [min, max]) per layer and stage, from this run's calls.

        Rows: every layer of the ``layerwise`` scope (else ``weights``), then the end-to-end Jacobian; columns:
        the stages logged so far, in order (the ``train`` column is the latest training-time call).
        """
        return report.summary_table(self.stage_results, self.scopes)

    def selection(self, trainer: Trainer | None, pl_module: LightningModule) -> ParameterSelection:
        """The tensors whose layers are monitored: the pruner's selection, else the monitor's own rule."""
        pruner = _pruner(trainer) if trainer is not None else None
        chosen = getattr(pruner, "selection", None)
        if isinstance(chosen, ParameterSelection) and chosen.module is pl_module:
            if (self.include or self.exclude) and not self._warned_rule:
                self._warned_rule = True
                rank_zero_warn(
                    "SignalPropagationMonitor: the PruneAtInitCallback's selection decides which layers are monitored; "
                    f"the monitor's own include={self.include} / exclude={self.exclude} are not used"
                )
            return chosen
        if self._selection is None or self._selection.module is not pl_module:
            self._selection = select_parameters(pl_module, include=self.include, exclude=self.exclude)
        return self._selection

    def compute(
        self, trainer: Trainer | None, pl_module: LightningModule
    ) -> tuple[dict[str, dict[str, SpectrumStats]], dict[str, float]]:
        """``({scope: {layer or "end_to_end": SpectrumStats}}, {layer: density})`` for the module now."""
        selection = self.selection(trainer, pl_module)
        probe = self._probe_inputs(trainer, pl_module) if any(s != "weights" for s in self.scopes) else None
        results: dict[str, dict[str, SpectrumStats]] = {}
        for scope in self.scopes:
            results[scope] = jacobian_singular_values(
                pl_module,
                probe,
                scope=scope,
                method=self.method,
                layers=self.layers if scope != "end_to_end" else None,
                parameters=selection,
                input_key=self.input_key,
                forward_fn=self.forward_fn,
                seed=self.seed,
                **self.spectrum_kwargs,
            )
        return results, self._density(pl_module, selection)

    def _density(self, pl_module: LightningModule, selection: ParameterSelection) -> dict[str, float]:
        from lightning_prune_init import get_masks  # the package is loaded by then; no import cycle

        masks = get_masks(pl_module)
        layers = selected_layers(pl_module, selection)
        density: dict[str, float] = {}
        for key in select_keys(list(layers), self.layers):
            name = layers[key].parameter
            p, mask = selection[name], masks.get(name)
            kept = int(mask.sum()) if mask is not None else int(torch.count_nonzero(p.detach()))
            density[key] = kept / p.numel()
        return density

    def _probe_inputs(self, trainer: Trainer | None, pl_module: LightningModule) -> Probe:
        if self._probe is None:
            self._probe = self._make_probe(trainer, pl_module)
        dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), None)

        def place(t: Tensor) -> Tensor:
            t = t.to(pl_module.device)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return map_tensors(self._probe, place)

    def _make_probe(self, trainer: Trainer | None, pl_module: LightningModule) -> Probe:
        use_data = self.probe == "data"
        if use_data and (trainer is None or not _compat.train_data_defined(trainer)):
            rank_zero_warn("SignalPropagationMonitor: no train dataloader; probing with noise shaped like the inputs")
            use_data = False
        if use_data:
            assert trainer is not None
            batches = [probe_of(b, self.input_key) for b in fetch_batches(trainer, pl_module, 1)]
            have = batch_size(batches[0], "the training batch")
            if have < self.num_examples:
                more = math.ceil(self.num_examples / have)
                batches = [probe_of(b, self.input_key) for b in fetch_batches(trainer, pl_module, more)]
            probe = slice_batch(concat_batches(batches), slice(0, self.num_examples))
            got = batch_size(probe)
            if got < self.num_examples:
                rank_zero_warn(
                    f"SignalPropagationMonitor: the train dataloader has {got} examples; "
                    f"num_examples={self.num_examples} reduced to {got}"
                )
            return map_tensors(probe, lambda t: t.detach().to("cpu", copy=True))
        like = getattr(pl_module, "example_input_array", None)
        if not isinstance(like, (Tensor, Mapping)):
            raise ValueError(
                "SignalPropagationMonitor needs probe inputs: give a train dataloader (probe='data') or set "
                "`example_input_array` on the LightningModule (a tensor or a dict batch; probe='noise')"
            )
        generator = torch.Generator().manual_seed(self.seed)
        return noise_probe(like, self.num_examples, generator, vocabulary_size(pl_module), self.input_key)

    # --- logging ------------------------------------------------------------------------------------
    @staticmethod
    def metrics(
        stage: str, results: Mapping[str, Mapping[str, SpectrumStats]], density: Mapping[str, float]
    ) -> dict[str, float]:
        """The scalar metrics of one stage under their documented tags."""
        return report.metrics(stage, results, density)

    def _log(
        self, trainer: Trainer, stage: str, results: dict[str, dict[str, SpectrumStats]], density: dict[str, float]
    ) -> None:
        step = trainer.global_step
        scalars = report.metrics(stage, results, density)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        if not (self.histograms or self.figures):
            return
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        others = [type(lg).__name__ for lg in trainer.loggers if not isinstance(lg, TensorBoardLogger)]
        if others and not self._warned_loggers:
            self._warned_loggers = True
            rank_zero_warn(
                f"SignalPropagationMonitor: histograms and figures go to TensorBoardLogger only; {', '.join(others)} "
                "receive(s) the scalars only"
            )
        if not tensorboards:
            return
        fig = report.figure(stage, results, density) if self.figures else None
        for logger in tensorboards:
            writer = logger.experiment
            if self.histograms:
                for scope, per_layer in results.items():
                    for layer, stats in per_layer.items():
                        if stats.values is not None:
                            tag = report.tag(stage, scope, layer)
                            writer.add_histogram(f"{tag}/values", stats.values.flatten(), global_step=step)
            if fig is not None:
                writer.add_figure(f"jsv/{stage}/layers", fig, global_step=step, close=False)


def _pruner(trainer: Trainer) -> PruneAtInitCallback | None:
    """The ``PruneAtInitCallback`` of the run, if any."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, PruneAtInitCallback)), None)
