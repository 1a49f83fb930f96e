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

from lightning_prune_init import PruneAtInitCallback, connection_sensitivity, select_masks, select_parameters
from lightning_prune_init.callbacks.state import read_state
from lightning_prune_init.papers import MNISTDataModule
from lightning_prune_init.scoring import criterion_masks, noise_batches

from tests.helpers import Classifier, OnceNet, lenet300, trainer_kwargs

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


def _missing_layer_checkpoint(tmp_path):
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "full", save_last=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1, enable_checkpointing=True),
                         callbacks=[PruneAtInitCallback(0.9, verbose=False), ckpt])
    trainer.fit(Classifier())
    state = torch.load(tmp_path / "full" / "last.ckpt", weights_only=False)
    (key,) = [k for k in state["callbacks"] if "PruneAtInitCallback" in k]
    state["callbacks"][key]["masks"]["masks"].pop("net.5.weight")
    torch.save(state, tmp_path / "damaged.ckpt")
    return str(tmp_path / "damaged.ckpt")


REPRODUCERS = {
    "`sparsity` must be a finite number in [0, 1)": lambda tmp: PruneAtInitCallback(sparsity=1.0),
    "matches no parameter": lambda tmp: select_parameters(lenet300(), include="fc1.*"),
    "no prunable parameters": lambda tmp: select_parameters(nn.Sequential(nn.ReLU())),
    "cannot read a scoring batch": lambda tmp: connection_sensitivity(
        lenet300(), [(_batch()[0].tolist(), _batch()[1])]
    ),
    "not logits [batch, classes]": lambda tmp: connection_sensitivity(
        nn.Sequential(nn.Conv2d(1, 4, 3)), [(_batch()[0], torch.zeros(4, dtype=torch.long))]
    ),
    "labels='true' needs": lambda tmp: connection_sensitivity(lenet300(), [_batch()[0]]),
    "cannot use `loss_fn`": lambda tmp: PruneAtInitCallback(
        0.9, supervision="label_free", scoring={"loss_fn": "tests.helpers.dict_batch_loss"}
    ),
    "takes no option": lambda tmp: PruneAtInitCallback(0.9, scoring={"options": {"rounds": 3}}),
    "needs autograd": lambda tmp: _in_inference_mode(lambda: connection_sensitivity(lenet300(), [_batch()])),
    "on the meta device": lambda tmp: connection_sensitivity(lenet300().to("meta"), [_batch()]),
    "needs second derivatives": lambda tmp: criterion_masks(
        OnceNet(), [(torch.randn(4, 6), torch.randint(0, 3, (4,)))], criterion="grasp", sparsity=0.5
    ),
    "pass `vocab_size`": lambda tmp: noise_batches({"input_ids": torch.randint(0, 50, (2, 5))}),
    "scores would not be finite": lambda tmp: connection_sensitivity(lenet300(), [(_batch()[0] * float("nan"), _batch()[1])]),
    "would be pruned entirely": lambda tmp: select_masks({"a": torch.ones(100), "b": torch.zeros(10)}, 0.5),
    "lower `min_density`": lambda tmp: select_masks({"a": torch.rand(100)}, 0.9, min_density=0.5),
    "conflicts with `masking.pattern`": lambda tmp: PruneAtInitCallback(0.9, masking={"pattern": "2:4"}),
    "input dimension to be a multiple of": lambda tmp: _fit(
        tmp, PruneAtInitCallback(masking={"pattern": "2:8"}, parameters="net.5.weight")
    ),
    "has no import path": lambda tmp: PruneAtInitCallback(0.9, scoring={"logits_fn": lambda model, batch: batch}),
    "cannot resume from": lambda tmp: _fit(tmp, PruneAtInitCallback(0.9), ckpt_path=_missing_layer_checkpoint(tmp)),
    "holds a state of unknown format": lambda tmp: read_state({"format": 99}, "last.ckpt"),
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


def _in_inference_mode(fn):
    with torch.inference_mode():
        return fn()


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
