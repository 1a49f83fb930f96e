"""``SignalPropagationMonitor``: log Jacobian singular values and per-layer density during a fit.

When it logs
    * At fit start. With a ``PruneAtInitCallback`` in ``trainer.callbacks``, at each stage it announces
      through ``on_prune_stage``: ``after_init`` (before pruning), ``after_pruning``, ``after_repair``.
      Without one, once, as stage ``fit_start``. (A run resumed with restored masks announces no stage.)
    * During training, stage ``train``, every ``every_n_steps`` optimizer steps: before the training step
      of each batch whose ``trainer.global_step`` is a multiple of ``every_n_steps``, i.e. with the weights
      after ``global_step`` optimizer steps. Step 0 is included, so the ``train`` curves start from the
      state training starts from.

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
only). Statistics an estimate cannot give are not logged (see :mod:`lightning_prune_init.spectrum`).
Density is the mask's kept fraction, or the fraction of non-zero entries when no mask is attached.

Monitoring leaves no trace on training: it runs on global rank 0 only, in ``eval()`` mode (each module's mode
restored), under ``torch.no_grad()`` with its own ``torch.Generator``, inside ``torch.random.fork_rng``; it
writes no ``.grad`` and no batch-norm statistics. The probe inputs (``num_examples`` inputs from the first
training batches, or noise shaped like ``example_input_array``) are taken once and saved in the callback's
checkpoint state, so curves stay comparable across a resume.
"""

from __future__ import annotations

import fnmatch
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

from lightning_prune_init.callbacks.batches import fetch_batches
from lightning_prune_init._quiet import preserve_random_state
from lightning_prune_init import _compat
from lightning_prune_init.parameters import layer_name, prunable_parameters
from lightning_prune_init.scoring import resolve_callable
from lightning_prune_init.spectrum import END_TO_END, METHODS, SCOPES, SpectrumStats, jacobian_singular_values

__all__ = ["SignalPropagationMonitor", "STAGES"]

#: Stages a ``PruneAtInitCallback`` announces, in order, plus ``fit_start`` and ``train``.
STAGES: tuple[str, ...] = ("after_init", "after_pruning", "after_repair", "fit_start", "train")
_STATE_FORMAT = 1


def _default_forward(module: torch.nn.Module, x: Tensor) -> Tensor:
    return module(x)


class SignalPropagationMonitor(Callback):
    r"""Log Jacobian singular values (weights, layerwise, end to end) and per-layer density.

    Args:
        every_n_steps: log stage ``train`` every this many optimizer steps (step 0 included); ``None`` or
            ``0``: fit-start stages only. Default 100.
        scopes: which of ``"weights"``, ``"layerwise"``, ``"end_to_end"`` to compute. Default all three.
        num_examples: probe examples for the data-dependent scopes. Default 8.
        layers: glob pattern(s) on layer (module) names, e.g. ``"net.*"``, choosing the layers reported.
            Default: every prunable layer.
        method: ``"exact"``, ``"estimate"`` or ``"auto"`` (default; exact for small Jacobians), see
            :func:`~lightning_prune_init.spectrum.jacobian_singular_values`.
        probe: ``"data"`` (default; inputs of the first training batches) or ``"noise"`` (standard normal
            noise shaped like ``pl_module.example_input_array``, from a generator seeded with ``seed``).
            ``"data"`` falls back to noise, with a warning, when there is no train dataloader.
        input_key: for dict batches, the key of the inputs. Tuple/list batches use element 0, tensor batches
            the tensor itself.
        forward_fn: ``forward_fn(pl_module, x) -> output tensor`` or its import path; default ``pl_module(x)``.
        include, exclude: glob patterns on parameter names defining the prunable layers, as for
            ``PruneAtInitCallback`` (default: weights of every conv and linear layer).
        histograms: log histograms of the exact singular values to TensorBoard. Default True.
        figures: log the per-layer figure to TensorBoard. Default True.
        seed: seed of the probe noise and of the estimators' random vectors. Default 0.
        spectrum_kwargs: further keyword arguments of ``jacobian_singular_values`` (``max_exact_dim``,
            ``max_exact_numel``, ``power_iters``, ``num_probes``, ``lanczos_steps``, ``lanczos_probes``).

    The last results are kept in :attr:`last_results` (``{scope: {layer: SpectrumStats}}``) and
    :attr:`last_density` on rank 0.
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
        forward_fn: str | Callable[[LightningModule, Tensor], Tensor] | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        histograms: bool = True,
        figures: bool = True,
        seed: int = 0,
        spectrum_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0
        ):
            raise ValueError(f"`every_n_steps` must be None or an integer >= 0, got {every_n_steps!r}")
        scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        if not scopes or any(s not in SCOPES for s in scopes):
            raise ValueError(f"`scopes` must be a non-empty list of {SCOPES}, got {scopes!r}")
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"`num_examples` must be an integer >= 1, got {num_examples!r}")
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
        if probe not in ("data", "noise"):
            raise ValueError(f"`probe` must be 'data' or 'noise', got {probe!r}")
        allowed = {"max_exact_dim", "max_exact_numel", "power_iters", "num_probes", "lanczos_steps", "lanczos_probes"}
        spectrum_kwargs = dict(spectrum_kwargs or {})
        unknown = set(spectrum_kwargs) - allowed
        if unknown:
            raise ValueError(f"`spectrum_kwargs` accepts {sorted(allowed)}, got unknown {sorted(unknown)}")
        self.every_n_steps = every_n_steps or 0
        self.scopes = scopes
        self.num_examples = num_examples
        self.layers = layers
        self.method = method
        self.probe = probe
        self.input_key = input_key
        self.forward_fn: Callable = resolve_callable(forward_fn, "forward_fn") or _default_forward
        self.include = include
        self.exclude = exclude
        self.histograms = histograms
        self.figures = figures
        self.seed = seed
        self.spectrum_kwargs = spectrum_kwargs
        self.last_results: dict[str, dict[str, SpectrumStats]] = {}
        self.last_density: dict[str, float] = {}
        self._probe: Tensor | None = None  # [num_examples, ...] on CPU
        self._last_train_step = -1
        self._warned_loggers = False
        self.stage_results: dict[str, dict[str, dict[str, SpectrumStats]]] = {}

    # --- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        strategy = type(trainer.strategy).__name__
        if stage == "fit" and _compat.shards_parameters(trainer):
            raise MisconfigurationException(
                f"SignalPropagationMonitor does not support {strategy}: it runs the module on global rank 0 alone, "
                "which needs the full parameters on that rank. Supported: single device and DDP."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not any(type(cb).__name__ == "PruneAtInitCallback" for cb in trainer.callbacks):
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
        if state_dict.get("format") != _STATE_FORMAT:
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
        if not self.stage_results:
            return ""
        stages = list(self.stage_results)
        scope = "layerwise" if "layerwise" in self.scopes else "weights" if "weights" in self.scopes else None
        rows: list[tuple[str, list[str]]] = []
        layer_names: list[str] = []
        for results in self.stage_results.values():
            for name in results.get(scope, {}) if scope else {}:
                if name not in layer_names:
                    layer_names.append(name)
        cell = lambda st: f"{st.mean:.3f} ± {st.std:.3f} [{st.min:.3f}, {st.max:.3f}]" if st is not None else ""  # noqa: E731
        for name in layer_names:
            rows.append((f"{scope}: {name}", [cell(self.stage_results[s].get(scope, {}).get(name)) for s in stages]))
        if "end_to_end" in self.scopes:
            rows.append(("end to end", [cell(self.stage_results[s].get("end_to_end", {}).get(END_TO_END)) for s in stages]))
        width = max(len(r[0]) for r in rows)
        widths = [max(len(stage), *(len(r[1][i]) for r in rows)) for i, stage in enumerate(stages)]
        lines = ["Jacobian singular values: mean ± std [min, max]"]
        lines.append("  ".join([" " * width] + [st.rjust(w) for st, w in zip(stages, widths)]))
        for label, cells in rows:
            lines.append("  ".join([label.ljust(width)] + [c.rjust(w) for c, w in zip(cells, widths)]))
        return "\n".join(lines)

    def compute(
        self, trainer: Trainer | None, pl_module: LightningModule
    ) -> tuple[dict[str, dict[str, SpectrumStats]], dict[str, float]]:
        """``({scope: {layer or "end_to_end": SpectrumStats}}, {layer: density})`` for the module now."""
        results: dict[str, dict[str, SpectrumStats]] = {}
        probe = None
        if any(s != "weights" for s in self.scopes):
            probe = self._probe_inputs(trainer, pl_module)
        for scope in self.scopes:
            results[scope] = jacobian_singular_values(
                pl_module,
                probe,
                scope=scope,
                method=self.method,
                layers=self.layers if scope != "end_to_end" else None,
                parameters=prunable_parameters(pl_module, include=self.include, exclude=self.exclude),
                forward_fn=self.forward_fn,
                seed=self.seed,
                **self.spectrum_kwargs,
            )
        return results, self._density(pl_module)

    def _density(self, pl_module: LightningModule) -> dict[str, float]:
        try:
            from lightning_prune_init.masking import get_masks

            masks = get_masks(pl_module)
        except ImportError:  # pragma: no cover - masking is part of the package
            masks = {}
        density: dict[str, float] = {}
        for name, p in prunable_parameters(pl_module, include=self.include, exclude=self.exclude).items():
            if p.dim() < 2:
                continue
            key = layer_name(name) if name.endswith(".weight") else name
            mask = masks.get(name)
            kept = int(mask.sum()) if mask is not None else int(torch.count_nonzero(p.detach()))
            density[key] = kept / p.numel()
        if self.layers is not None:
            patterns = [self.layers] if isinstance(self.layers, str) else list(self.layers)
            density = {k: v for k, v in density.items() if any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}
        return density

    def _inputs_of(self, batch: Any) -> Tensor:
        if isinstance(batch, Tensor):
            return batch
        if isinstance(batch, Mapping):
            if self.input_key is None or self.input_key not in batch:
                raise ValueError(
                    f"dict batches need `input_key` naming the inputs; batch keys are {list(batch)}, "
                    f"input_key={self.input_key!r}"
                )
            return batch[self.input_key]
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            return batch[0]
        raise TypeError(
            f"cannot find the inputs in a batch of type {type(batch).__name__}: batches must be a tensor, "
            "(inputs, ...) or a dict with `input_key`; or use probe='noise'"
        )

    def _probe_inputs(self, trainer: Trainer | None, pl_module: LightningModule) -> Tensor:
        if self._probe is None:
            self._probe = self._make_probe(trainer, pl_module)
        dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), None)
        probe = self._probe.to(pl_module.device)
        if dtype is not None and probe.is_floating_point():
            probe = probe.to(dtype)
        return probe

    def _make_probe(self, trainer: Trainer | None, pl_module: LightningModule) -> Tensor:
        use_data = self.probe == "data"
        if use_data and (trainer is None or not _compat.train_data_defined(trainer)):
            rank_zero_warn("SignalPropagationMonitor: no train dataloader; probing with noise shaped like the inputs")
            use_data = False
        if use_data:
            assert trainer is not None
            inputs = [self._inputs_of(b) for b in fetch_batches(trainer, pl_module, 1)]
            have = inputs[0].shape[0]
            if have < self.num_examples:
                more = math.ceil(self.num_examples / max(have, 1))
                inputs = [self._inputs_of(b) for b in fetch_batches(trainer, pl_module, more)]
            x = torch.cat(inputs)[: self.num_examples]
            if x.shape[0] < self.num_examples:
                rank_zero_warn(
                    f"SignalPropagationMonitor: the train dataloader has {x.shape[0]} examples; "
                    f"num_examples={self.num_examples} reduced to {x.shape[0]}"
                )
            return x.detach().to("cpu", copy=True)
        like = getattr(pl_module, "example_input_array", None)
        if not isinstance(like, Tensor):
            raise ValueError(
                "SignalPropagationMonitor needs probe inputs: give a train dataloader (probe='data') or set "
                "`example_input_array` on the LightningModule (probe='noise')"
            )
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn((self.num_examples, *like.shape[1:]), generator=generator, dtype=torch.float32)

    # --- logging ------------------------------------------------------------------------------------
    @staticmethod
    def metrics(
        stage: str, results: Mapping[str, Mapping[str, SpectrumStats]], density: Mapping[str, float]
    ) -> dict[str, float]:
        """The scalar metrics of one stage under their documented tags."""
        out: dict[str, float] = {}
        for scope, per_layer in results.items():
            for layer, stats in per_layer.items():
                prefix = f"jsv/{stage}/{scope}" if layer == END_TO_END else f"jsv/{stage}/{scope}/{layer}"
                for stat, value in stats.scalars().items():
                    out[f"{prefix}/{stat}"] = value
        for layer, value in density.items():
            out[f"density/{stage}/{layer}"] = value
        return out

    def _log(
        self,
        trainer: Trainer,
        stage: str,
        results: dict[str, dict[str, SpectrumStats]],
        density: dict[str, float],
    ) -> None:
        step = trainer.global_step
        metrics = self.metrics(stage, results, density)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
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
        figure = self._figure(stage, results, density) if self.figures else None
        for logger in tensorboards:
            writer = logger.experiment
            if self.histograms:
                for scope, per_layer in results.items():
                    for layer, stats in per_layer.items():
                        if stats.values is None:
                            continue
                        tag = f"jsv/{stage}/{scope}" if layer == END_TO_END else f"jsv/{stage}/{scope}/{layer}"
                        writer.add_histogram(f"{tag}/values", stats.values.flatten(), global_step=step)
            if figure is not None:
                writer.add_figure(f"jsv/{stage}/layers", figure, global_step=step, close=False)

    @staticmethod
    def _figure(stage: str, results: dict[str, dict[str, SpectrumStats]], density: dict[str, float]) -> Any:
        from matplotlib.figure import Figure

        spread_scope = next((s for s in ("layerwise", "weights") if results.get(s)), None)
        layers = list(density)
        fig = Figure(figsize=(max(4.0, 0.6 * len(layers) + 2), 5.0))
        ax_density, ax_sv = fig.subplots(2, 1, sharex=True)
        positions = list(range(len(layers)))
        ax_density.bar(positions, [density[k] for k in layers], color="tab:gray")
        ax_density.set_ylabel("density")
        ax_density.set_ylim(0, 1.05)
        ax_density.set_title(f"{stage}: per-layer density and singular values")
        if spread_scope is not None:
            per_layer = results[spread_scope]
            for i, k in enumerate(layers):
                stats = per_layer.get(k)
                if stats is None:
                    continue
                if math.isfinite(stats.min):
                    ax_sv.vlines(i, stats.min, stats.max, color="tab:blue")
                ax_sv.plot([i], [stats.max], "v", color="tab:blue")
                if math.isfinite(stats.mean):
                    ax_sv.plot([i], [stats.mean], "o", color="tab:orange")
            ax_sv.axhline(1.0, color="black", linewidth=0.5, linestyle="--")
            ax_sv.set_ylabel(f"{spread_scope} σ (min–max, mean)")
        ax_sv.set_xticks(positions)
        ax_sv.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
        fig.tight_layout()
        return fig
