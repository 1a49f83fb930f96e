"""Run by tests/test_faults.py: pruned fits that checkpoint after every step and die by SIGKILL at given points.

Usage: python tests/fault_worker.py OUT_DIR POINT [POINT ...]

The process imports torch and Lightning once, then forks one child per POINT, in turn; each child runs a fresh
fit in ``OUT_DIR/POINT`` and is killed with SIGKILL (``kill -9``; nothing is cleaned up) at its point:

* ``after_pruning`` (SGD): kills itself inside the second optimizer step, right after pruning (``step=1.ckpt``
  written);
* ``mid_training`` (AdamW): trains on; this process sends it SIGKILL once ``step=5.ckpt`` is on disk and the
  run has moved past it;
* ``in_torch_save`` (SGD): kills itself inside ``torch.save`` of the checkpoint of step 3, half of it serialized
  (Lightning serializes into memory, then moves a finished temporary file into place: nothing partial may reach
  the checkpoint folder);
* ``torn_write`` (AdamW): the same, under a non-atomic ``CheckpointIO`` that writes straight to ``step=3.ckpt``:
  half of its bytes are on disk when the child dies (a torn file the resume must skip);
* ``on_save_checkpoint`` (SGD): kills itself inside a callback's ``on_save_checkpoint`` for step 3.

Each child writes ``masks.pt`` (the masks right after pruning, before any step), ``ckpt/step=N.ckpt`` and
``manifest.json`` (``{file name: sha256}`` of every finished checkpoint, rewritten at every batch start, so the test
can tell that the checkpoints written before the kill are bit for bit as they were). This process writes
``OUT_DIR/POINT/status.json`` (how the child ended) and exits 0.
"""

import hashlib
import io
import json
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: `tests` importable

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.io import TorchCheckpointIO  # noqa: E402

from lightning_prune_init import PruneAtInitCallback, get_masks  # noqa: E402
from tests.helpers import Classifier, trainer_kwargs  # noqa: E402

KILL_STEP = 3  # the checkpoint whose write is killed (in_torch_save, torn_write, on_save_checkpoint)
EXTERNAL_KILL_AFTER = "step=5.ckpt"  # mid_training: killed from outside once this checkpoint is in the manifest
OPTIMIZERS = {"after_pruning": "sgd", "mid_training": "adamw", "in_torch_save": "sgd", "torn_write": "adamw",
              "on_save_checkpoint": "sgd"}


def kill_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _atomic_torch_save(obj, path: str) -> None:
    torch.save(obj, path + ".part")
    os.replace(path + ".part", path)


class Record(pl.Callback):
    """Dumps the masks after pruning (placed after PruneAtInitCallback) and keeps the manifest of checkpoints."""

    def __init__(self, out: str) -> None:
        self.out, self.hashes = out, {}

    def on_fit_start(self, trainer, pl_module):
        _atomic_torch_save({n: m.cpu() for n, m in get_masks(pl_module).items()}, os.path.join(self.out, "masks.pt"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        folder = os.path.join(self.out, "ckpt")
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".ckpt") and name not in self.hashes:
                with open(os.path.join(folder, name), "rb") as f:
                    self.hashes[name] = hashlib.sha256(f.read()).hexdigest()
        with open(os.path.join(self.out, "manifest.json.part"), "w") as f:
            json.dump(self.hashes, f)
        os.replace(os.path.join(self.out, "manifest.json.part"), os.path.join(self.out, "manifest.json"))


class Killer(pl.Callback):
    def __init__(self, point: str) -> None:
        self.point = point

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.point == "after_pruning" and trainer.global_step == 1:
            kill_now()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.point == "on_save_checkpoint" and checkpoint["global_step"] == KILL_STEP:
            kill_now()


def _killing_torch_save(real):
    """``torch.save`` that, for the checkpoint of step KILL_STEP, writes half of its bytes and dies."""

    def save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("global_step") == KILL_STEP and "state_dict" in obj):
            return real(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as target:
                target.write(half)
                target.flush()
                os.fsync(target.fileno())
        else:
            f.write(half)
        kill_now()

    return save


class NonAtomicIO(TorchCheckpointIO):
    """Writes the checkpoint straight to its final path (as a plain ``torch.save(checkpoint, path)`` would)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(checkpoint, path)


def run_fit(out: str, point: str) -> None:
    """The child: one fit, killed at ``point`` (it returns only if nobody killed it)."""
    if point in ("in_torch_save", "torn_write"):
        torch.save = _killing_torch_save(torch.save)
    pl.seed_everything(0)
    model = Classifier(optimizer=OPTIMIZERS[point])
    checkpoint = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(
        **trainer_kwargs(out, max_steps=10**6 if point == "mid_training" else 20, enable_checkpointing=True),
        callbacks=[PruneAtInitCallback(0.9, verbose=False), Record(out), Killer(point), checkpoint],
        plugins=[NonAtomicIO()] if point == "torn_write" else None,
    )
    trainer.fit(model)


def _kill_when_checkpointed(pid: int, out: str, timeout: float = 240.0) -> None:
    """SIGKILL the child once EXTERNAL_KILL_AFTER is in its manifest (or after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    manifest = os.path.join(out, "manifest.json")
    while time.monotonic() < deadline:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            raise RuntimeError("mid_training: the child ended before it was killed")
        try:
            with open(manifest) as f:
                if EXTERNAL_KILL_AFTER in json.load(f):
                    break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


def main() -> None:
    root, points = sys.argv[1], sys.argv[2:]
    for point in points:
        out = os.path.join(root, point)
        os.makedirs(out, exist_ok=True)
        pid = os.fork()
        if pid == 0:  # the child: never returns into this loop
            code = 0
            try:
                run_fit(out, point)
                print(f"{point}: finished without being killed", flush=True)
            except BaseException:  # noqa: BLE001 - reported through the exit status
                traceback.print_exc()
                code = 1
            os._exit(code)
        if point == "mid_training":
            _kill_when_checkpointed(pid, out)
        _, status = os.waitpid(pid, 0)
        ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
        with open(os.path.join(out, "status.json"), "w") as f:
            json.dump(ended, f)


if __name__ == "__main__":
    main()
