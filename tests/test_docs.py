"""The docs: every troubleshooting message is reproduced here, the API reference builds, links resolve."""

import copy
import os
import re
import subprocess
import sys
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_prune_init import (
    MNISTDataModule,
    PruneAtInitCallback,
    connection_sensitivity,
    prunable_parameters,
    select_masks,
)

from tests.helpers import Classifier, lenet300, trainer_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "guide.md")


def _troubleshooting_messages() -> list[str]:
    text = open(GUIDE).read().split("## Troubleshooting", 1)[1]
    found = []
    for line in text.splitlines():
        m = re.match(r"### (`+)\s?(.*?)\s?\1\s*$", line)
        if m:
            found.append(m.group(2))
    return found


def _batch(n=4):
    return torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))


def _weights_only_checkpoint(tmp_path):
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "w", save_last=True, save_weights_only=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1, enable_checkpointing=True),
                         callbacks=[PruneAtInitCallback(0.9, verbose=False), ckpt])
    trainer.fit(Classifier())
    return str(tmp_path / "w" / "last.ckpt")


def _fit(tmp_path, callback, model=None, ckpt_path=None):
    pl.seed_everything(0)
    pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback]).fit(model or Classifier(), ckpt_path=ckpt_path)


class _NoData(Classifier):
    def train_dataloader(self):  # noqa: D102 - no data at all
        raise NotImplementedError


_NoData.train_dataloader = pl.LightningModule.train_dataloader  # not overridden: no train data


class _FakeTrainer:
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = FSDPStrategy.__new__(FSDPStrategy)


REPRODUCERS = {
    "`sparsity` must be in [0, 1)": lambda tmp: PruneAtInitCallback(sparsity=1.0),
    "matches no parameter": lambda tmp: prunable_parameters(lenet300(), include="fc1.*"),
    "no prunable parameters": lambda tmp: prunable_parameters(nn.Sequential(nn.ReLU())),
    "cannot read a scoring batch": lambda tmp: connection_sensitivity(lenet300(), [{"image": _batch()[0]}]),
    "not logits [batch, classes]": lambda tmp: connection_sensitivity(
        nn.Sequential(nn.Conv2d(1, 4, 3)), [(_batch()[0], torch.zeros(4, dtype=torch.long))]
    ),
    "labels='true' needs": lambda tmp: connection_sensitivity(lenet300(), [_batch()[0]]),
    "scores would not be finite": lambda tmp: connection_sensitivity(lenet300(), [(_batch()[0] * float("nan"), _batch()[1])]),
    "would be pruned entirely": lambda tmp: select_masks({"a": torch.ones(100), "b": torch.zeros(10)}, 0.5),
    "lower `min_density`": lambda tmp: select_masks({"a": torch.rand(100)}, 0.9, min_density=0.5),
    "holds no PruneAtInitCallback state": lambda tmp: _fit(
        tmp, PruneAtInitCallback(0.9, policies={"on_missing_state": "error"}), ckpt_path=_weights_only_checkpoint(tmp)
    ),
    "do not match the keep count": lambda tmp: _fit(
        tmp, PruneAtInitCallback(0.5), ckpt_path=_weights_only_checkpoint(tmp)
    ),
    "does not support FSDPStrategy": lambda tmp: PruneAtInitCallback(0.9).setup(_FakeTrainer(), None, "fit"),
    "unknown `criterion`": lambda tmp: PruneAtInitCallback(0.9, criterion="snap"),
    "Pass `download=True`": lambda tmp: MNISTDataModule(root=str(tmp / "nothing")).prepare_data(),
    "no train dataloader to fetch batches from": lambda tmp: _fit(tmp, PruneAtInitCallback(0.9), model=_NoData()),
}


def test_every_troubleshooting_entry_has_a_reproducer():
    assert _troubleshooting_messages() == list(REPRODUCERS)


@pytest.mark.parametrize("message", list(REPRODUCERS))
def test_troubleshooting_message_is_reproduced(message, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            REPRODUCERS[message](tmp_path)
        except Exception as error:  # noqa: BLE001 - any error type; its message is what the page quotes
            assert message in str(error), str(error)
            return
    assert any(message in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_api_reference_builds(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pdoc", "lightning_prune_init", "--docformat", "google", "-o", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    index = (tmp_path / "lightning_prune_init.html").read_text()
    for name in ("PruneAtInitCallback", "SignalPropagationMonitor", "connection_sensitivity", "select_masks",
                 "apply_masks", "approximate_isometry", "jacobian_singular_values", "init_model_"):
        assert name in index


def test_local_paths_named_in_the_docs_exist():
    for doc in ["README.md", *(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))]:
        text = open(os.path.join(ROOT, doc)).read()
        for path in set(re.findall(r"`((?:docs|examples|benchmarks|tests)/[\w./-]+\.(?:md|yaml|py))`", text)):
            assert os.path.exists(os.path.join(ROOT, path.split("::")[0])), f"{doc} names {path}"
