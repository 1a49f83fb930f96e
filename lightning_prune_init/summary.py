"""The end-of-run summary printed by the ``lightning-prune-init`` command (and usable from scripts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_prune_init.callbacks.prune_at_init import PruneAtInitCallback
from lightning_prune_init.callbacks.signal_propagation import SignalPropagationMonitor
from lightning_prune_init.masks import get_masks, sparsity_report


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fit_summary(trainer: Trainer, pl_module: LightningModule, test_metrics: Mapping[str, float] | None = None) -> str:
    """A plain-text summary: per-layer density (and repair / spectrum columns when available), test metrics,
    and where the logs are."""
    pruner = next((cb for cb in trainer.callbacks if isinstance(cb, PruneAtInitCallback)), None)
    masks = get_masks(pl_module)
    sections = []
    if masks:
        report = sparsity_report(masks)
        repair = getattr(pruner, "isometry_report", None)
        repair_rows = dict(repair.layers) if repair is not None else {}
        headers = ["parameter", "kept", "total", "density"]
        if repair_rows:
            headers += ["orth. error before repair", "after", "best possible"]
        rows = []
        for name, layer in report.layers.items():
            row = [name, f"{layer.kept:,}", f"{layer.total:,}", f"{layer.density:.2%}"]
            if repair_rows:
                r = repair_rows.get(name)
                row += [f"{r.error_before:.3f}", f"{r.error_after:.3f}", f"{r.best_possible:.3f}"] if r else ["", "", ""]
            rows.append(row)
        rows.append(["total", f"{report.kept:,}", f"{report.total:,}", f"{report.density:.2%}"] + [""] * (len(headers) - 4))
        sections.append("Pruned at initialization\n" + _table(headers, rows))
    else:
        sections.append("No masks attached: the model was not pruned.")
    monitor_summary = next((cb.summary() for cb in trainer.callbacks if isinstance(cb, SignalPropagationMonitor)), None)
    if monitor_summary:
        sections.append(monitor_summary)
    if test_metrics:
        sections.append("Test\n" + "\n".join(f"  {k}: {float(v):.4f}" for k, v in sorted(test_metrics.items())))
    dirs = [lg.log_dir for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if dirs:
        sections.append("TensorBoard logs: " + ", ".join(dirs) + f"\n  view them with: tensorboard --logdir {dirs[0]}")
    return "\n\n".join(sections)


def print_fit_summary(trainer: Trainer, pl_module: LightningModule, test_metrics: Mapping[str, Any] | None = None) -> None:
    """Print :func:`fit_summary` (call it on rank 0)."""
    print("\n" + fit_summary(trainer, pl_module, test_metrics) + "\n", flush=True)
