"""Run by tests/test_ddp.py: a 2-process DDP fit on CPU (gloo) that dumps each rank's masks and weights.

Usage: python tests/ddp_worker.py OUT_DIR [EXTRA_CALLBACK_KWARGS_JSON] [desync_rng] [criteria]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: `tests` importable

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from tests.helpers import Classifier  # noqa: E402
from lightning_prune_init import PruneAtInitCallback, get_masks  # noqa: E402
from lightning_prune_init.callbacks.batches import fetch_batches  # noqa: E402


class Dump(pl.Callback):
    def __init__(self, out: str, when: str) -> None:
        self.out, self.when = out, when

    def _save(self, trainer, pl_module, tag, **extra):
        state = {
            "masks": {n: m.cpu() for n, m in get_masks(pl_module).items()},
            "weights": {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()},
            **extra,
        }
        torch.save(state, os.path.join(self.out, f"{tag}_rank{trainer.global_rank}.pt"))

    def on_fit_start(self, trainer, pl_module):
        if self.when == "before" and DESYNC:
            torch.manual_seed(1000 + trainer.global_rank)  # ranks now draw different re-initializations
        if self.when == "before":
            self._save(trainer, pl_module, "before", batch=[t.cpu() for t in fetch_batches(trainer, pl_module, 1)[0]])
        else:
            self._save(trainer, pl_module, "pruned")

    def on_train_end(self, trainer, pl_module):
        if self.when == "after":
            optimizer = trainer.optimizers[0]
            momentum = {n: optimizer.state[p]["momentum_buffer"].cpu() for n, p in pl_module.named_parameters()}
            self._save(trainer, pl_module, "trained", momentum=momentum)


DESYNC = "desync_rng" in sys.argv


def _trainer(callbacks, root, max_steps=5):
    return pl.Trainer(
        default_root_dir=root,  # the density profile and any logs go there, not into the working directory
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def run_criteria(out: str) -> None:
    """One fit per registered criterion, each with a fresh Trainer in the same 2-process group."""
    from lightning_prune_init.scoring import CRITERIA

    for name in sorted(CRITERIA):
        pl.seed_everything(0)
        model = Classifier(n=128, batch_size=16)
        options = {"rounds": 3} if name in ("synflow", "iterative_snip") else None
        pruner = PruneAtInitCallback(0.9, criterion=name, scoring={"options": options}, verbose=False)
        dump = Dump(os.path.join(out, name), "after")
        os.makedirs(dump.out, exist_ok=True)
        _trainer([pruner, dump], dump.out, max_steps=2).fit(model)


def main() -> None:
    out = sys.argv[1]
    if "criteria" in sys.argv:
        run_criteria(out)
        return
    extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].startswith("{") else {}
    pl.seed_everything(0)
    model = Classifier(n=128, batch_size=16)
    _trainer([Dump(out, "before"), PruneAtInitCallback(0.9, **extra), Dump(out, "after")], out).fit(model)


if __name__ == "__main__":
    main()
