"""The per-tensor density profile of a pruned run, written next to the run's logs.

What pruning-at-initialization methods really choose is how dense each layer is (Frankle et al., 2021), so every
run records it: ``prune_density-<id>.json`` (the settings and, per tensor, kept / total / density / dead units)
and ``prune_density-<id>.csv`` (the table). ``<id>`` is a digest of the masks, so runs that share a folder never
overwrite each other's profile and the same masks always give the same file. Files are written atomically (a
temporary file renamed into place), into the run's log folder, or its checkpoint folder when it has no logger,
never into the current directory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Trainer
from torch import Tensor

__all__ = ["masks_digest", "profile_folder", "write_density_profile"]


def masks_digest(masks: Mapping[str, Tensor]) -> str:
    """A short hex digest of the masks (names, shapes and bits), the same on every rank and device."""
    h = hashlib.sha256()
    for name in sorted(masks):
        m = masks[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(m.shape)}:".encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()[:12]


def profile_folder(trainer: Trainer) -> str | None:
    """The run's log folder, else the folder of its checkpoints, else ``None``. Call it on every rank: reading
    ``trainer.log_dir`` is a collective operation under DDP."""
    if trainer.loggers:
        return trainer.log_dir
    checkpoint = trainer.checkpoint_callback
    return getattr(checkpoint, "dirpath", None) if checkpoint is not None else None


def _atomic_write(path: str, write: Any) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_density_profile(
    folder: str, digest: str, config: Mapping[str, Any], layers: Mapping[str, Mapping[str, Any]]
) -> str:
    """Write ``prune_density-<digest>.json`` and ``.csv`` into ``folder`` (created if needed); returns the JSON path.

    ``layers`` maps each tensor name to ``{"kept", "total", "density", "dead_units"}``.
    """
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, f"prune_density-{digest}")
    _atomic_write(base + ".json", lambda f: json.dump({"config": dict(config), "layers": dict(layers)}, f, indent=2))

    def table(f: Any) -> None:
        writer = csv.writer(f)
        writer.writerow(["parameter", "kept", "total", "density", "dead_units"])
        for name, row in layers.items():
            writer.writerow([name, row["kept"], row["total"], f"{row['density']:.6f}", row["dead_units"]])

    _atomic_write(base + ".csv", table)
    return base + ".json"
