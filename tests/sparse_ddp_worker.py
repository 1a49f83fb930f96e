"""Run by tests/test_sparse_ddp.py: a 2-process DDP fit on CPU (gloo) with sparse execution, dumping each rank's
masks, dense weights, compact values and optimizer state.

Usage: python tests/sparse_ddp_worker.py OUT_DIR: one fit with sparse_execution "on", then one with "auto" (forced to
switch by its threshold: the decisions must come from rank 0), in the same process group; OUT_DIR/<mode>/.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: `tests` importable

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from lightning_prune_init import PruneAtInitCallback  # noqa: E402
from lightning_prune_init.callbacks.sparse_execution import switch_to_sparse_execution  # noqa: E402
from lightning_prune_init.sparse import sparse_modules  # noqa: E402
from tests.helpers import Classifier  # noqa: E402


class SparseSwitch(pl.Callback):
    def __init__(self, mode):
        self.mode, self.report = mode, None

    def on_fit_start(self, trainer, pl_module):
        options = {"threshold": 1e9, "rounds": 1} if self.mode == "auto" else {}
        self.report = switch_to_sparse_execution(trainer, pl_module, self.mode, options=options, verbose=False)

    def on_train_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        state = {
            "weights": {n: t.detach().cpu().clone() for n, t in pl_module.state_dict().items()},
            "values": {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()},
            "momentum": {names[id(p)]: s["momentum_buffer"].cpu() for p, s in optimizer.state.items()},
            "masks": {n: m.pruning_masks()["weight"].cpu() for n, m in sparse_modules(pl_module).items()},
            "report": self.report,
            "wrapped": type(trainer.strategy.model).__name__,
            "ddp_params": sorted(n for n, _ in trainer.strategy.model.named_parameters()),
        }
        torch.save(state, os.path.join(self.out, f"trained_rank{trainer.global_rank}.pt"))


def fit(out: str, mode: str) -> None:
    pl.seed_everything(0)
    model = Classifier(n=128, batch_size=16)
    switch = SparseSwitch(mode)
    switch.out = out
    trainer = pl.Trainer(
        default_root_dir=out,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PruneAtInitCallback(0.9, verbose=False), switch],
    )
    trainer.fit(model)


def main() -> None:
    for mode in ("on", "auto"):
        out = os.path.join(sys.argv[1], mode)
        os.makedirs(out, exist_ok=True)
        fit(out, mode)


if __name__ == "__main__":
    main()
