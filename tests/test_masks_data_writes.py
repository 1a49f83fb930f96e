"""Masks survive `.data` writes and Lightning's weight averaging (issue 11 #5).

A write through ``p.data`` does not bump ``p._version``, so version-gated enforcement cannot see it. What must hold
anyway: every ``state_dict`` (so every checkpoint), every forward after ``mark_masks_stale``, the weights after
``enforce_masks_``, and the averaged copies of EMA/SWA, all with exact zeros at pruned entries.

The Lightning fits wire the calls PruneAtInitCallback is to make through the small test-local callback
``KeepMasks`` (mark stale at validation/test/predict epoch start, enforce at fit end, masks on the averaged copies).
"""

import pytest
import torch
import torch.nn.functional as F
import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, StochasticWeightAveraging
from torch import nn
from torch.utils.data import DataLoader

from lightning_prune_init import _compat  # the lead's callback finds averaged copies the same way
from lightning_prune_init.masks import (
    apply_masks,
    enforce_masks_,
    mark_masks_stale,
    masked_nonzeros,
)

from tests.helpers import Classifier, random_data, trainer_kwargs

SHAPE = (1, 8, 8)


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _masks(module: nn.Module, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.7 for n, p in module.named_parameters() if p.dim() == 2}


def _dirty(masks_or_counts) -> int:
    return sum(masks_or_counts.values())


# --- functional core -----------------------------------------------------------------------------------------
def test_state_dict_holds_zeros_after_a_data_write():
    net = _net()
    masks = _masks(net)
    apply_masks(net, masks)
    for p in net.parameters():
        p.data.add_(1.0)  # invisible to the version counter
    state = net.state_dict()
    assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in masks.items())
    assert _dirty(masked_nonzeros(net, masks)) == 0  # the live weights are zeroed too, not only the copy
    kept = {n: state[n][m] for n, m in masks.items()}
    assert all(torch.all(v != 0) for v in kept.values())  # kept entries untouched (all were shifted by 1.0)


def test_mark_stale_forces_one_pass_at_the_next_forward_then_none():
    net = _net()
    masks = _masks(net)
    apply_masks(net, masks)
    x = torch.randn(4, *SHAPE)
    net.train(False)
    mark_masks_stale(net)
    for p in net.parameters():
        p.data.add_(1.0)
    seen = {}
    handle = net[1].register_forward_pre_hook(lambda m, a: seen.update(w=m.weight.detach().clone()))  # runs after ours
    with torch.inference_mode():  # Lightning validates under inference mode
        net(x)
    handle.remove()
    assert torch.count_nonzero(seen["w"][~masks["1.weight"]]) == 0
    versions = {n: net.get_parameter(n)._version for n in masks}
    net[1].weight.data[~masks["1.weight"]] = 2.0  # not stale any more: the next forward does not write
    net(x)
    assert {n: net.get_parameter(n)._version for n in masks} == versions
    assert masked_nonzeros(net, masks)["1.weight"] == int((~masks["1.weight"]).sum())


def test_forced_pass_never_breaks_a_pending_backward():
    net = _net()
    masks = _masks(net)
    apply_masks(net, masks)
    out = net(torch.randn(4, *SHAPE))
    net.state_dict()  # forces a pass between forward and backward ...
    enforce_masks_(net)
    out.sum().backward()  # ... without an in-place error: forced passes write through `.data`
    assert all(torch.count_nonzero(net.get_parameter(n).grad[~m]) == 0 for n, m in masks.items())


def test_forced_pass_restores_the_trusted_step_invariant_after_a_data_write():
    """A step taken on weights dirtied through `.data` leaves momentum non-zero at pruned entries; the trusted
    (elementwise) step then moves pruned weights again on every later step. A forced pass must clean the state."""
    torch.manual_seed(0)
    net = _net()
    masks = _masks(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    apply_masks(net, masks, optimizers=[opt])
    x, y = torch.randn(16, *SHAPE), torch.randint(0, 10, (16,))
    net[1].weight.data.add_(1.0)  # e.g. a weight-averaging swap

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    enforce_masks_(net)  # what the callback does at fit end; mark_masks_stale works the same at the next forward
    for _ in range(20):
        step()
        assert _dirty(masked_nonzeros(net, masks)) == 0
        buf = opt.state[net[1].weight]["momentum_buffer"]
        assert torch.count_nonzero(buf[~masks["1.weight"]]) == 0


# --- Lightning fits ------------------------------------------------------------------------------------------
class Probe(Classifier):
    """Records, inside validation_step and test_step after the forward, the non-zero pruned entries it saw."""

    def __init__(self, masks=None, **kwargs):
        super().__init__(net=_net(), shape=SHAPE, n=64, batch_size=16, **kwargs)
        self.masks = masks
        self.seen = {"validate": [], "test": []}

    def _check(self, stage, batch):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.seen[stage].append(_dirty(masked_nonzeros(self, self.masks)))
        return loss

    def validation_step(self, batch, batch_idx):
        return self._check("validate", batch)

    def test_step(self, batch, batch_idx):
        return self._check("test", batch)

    def val_dataloader(self):
        return DataLoader(random_data(32, SHAPE, seed=1), batch_size=16)

    def test_dataloader(self):
        return DataLoader(random_data(32, SHAPE, seed=2), batch_size=16)


class KeepMasks(pl.Callback):
    """Exactly the calls PruneAtInitCallback makes (the lead moves them there)."""

    def __init__(self, masks):
        self.masks = masks

    def on_fit_start(self, trainer, pl_module):
        apply_masks(pl_module, self.masks, optimizers=trainer.optimizers)
        for average in _compat.averaged_models(trainer):
            apply_masks(average, self.masks)

    def on_validation_epoch_start(self, trainer, pl_module):
        mark_masks_stale(pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        mark_masks_stale(pl_module)

    def on_predict_epoch_start(self, trainer, pl_module):
        mark_masks_stale(pl_module)

    def on_fit_end(self, trainer, pl_module):
        enforce_masks_(pl_module)


class DataWriter(pl.Callback):
    """Writes into every parameter through `.data` after every training batch and before every evaluation."""

    def _write(self, pl_module):
        for p in pl_module.parameters():
            p.data.add_(1.0)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._write(pl_module)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._write(pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        self._write(pl_module)


def _pruned_in_state(state_dict, masks, prefix=""):
    return sum(int(torch.count_nonzero(state_dict[prefix + n][~m])) for n, m in masks.items())


AVERAGING = {
    "ema": lambda: EMAWeightAveraging(decay=0.5),
    "ema_never_updated": lambda: EMAWeightAveraging(update_starting_at_step=1000),
    "swa": lambda: StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1),
    "none": lambda: None,
}


CASES = [("ema", True), ("ema", False), ("ema_never_updated", True), ("ema_never_updated", False), ("swa", True), ("none", True)]


@pytest.mark.parametrize(
    "averaging, writer_first", CASES, ids=[f"{a}-writer_{'before' if w else 'after'}_averaging" for a, w in CASES]
)
def test_fit_with_weight_averaging_and_data_writes_keeps_exact_zeros(tmp_path, averaging, writer_first):
    pl.seed_everything(0)
    model = Probe()
    masks = _masks(model)
    model.masks = masks
    average = AVERAGING[averaging]()
    extra = [DataWriter()] + ([average] if average is not None else [])
    if not writer_first:
        extra.reverse()
    last = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    weights_only = ModelCheckpoint(dirpath=tmp_path / "weights", filename="w", save_weights_only=True, every_n_train_steps=3)
    trainer = pl.Trainer(
        **trainer_kwargs(
            tmp_path, enable_checkpointing=True, max_epochs=2, max_steps=-1, val_check_interval=2, limit_val_batches=2
        ),
        callbacks=[KeepMasks(masks), *extra, last, weights_only],
    )
    trainer.fit(model)
    assert len(model.seen["validate"]) >= 4
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    saved = torch.load(tmp_path / "weights" / "w.ckpt", weights_only=True)
    assert "optimizer_states" not in saved
    order = [n for n, _ in model.named_parameters()]
    momentum = {order[i]: s["momentum_buffer"] for i, s in ckpt["optimizer_states"][0]["state"].items()}
    found = {  # non-zero pruned entries, everywhere someone can read the weights
        "final weights": _dirty(masked_nonzeros(model, masks)),
        "validation forwards": sum(model.seen["validate"]),
        "last.ckpt state_dict": _pruned_in_state(ckpt["state_dict"], masks),
        "last.ckpt momentum": _pruned_in_state(momentum, masks),
        "weights-only checkpoint": _pruned_in_state(saved["state_dict"], masks),
    }
    if "current_model_state" in ckpt:  # WeightAveraging saves the average as state_dict, the model beside it
        found["last.ckpt current_model_state"] = _pruned_in_state(ckpt["current_model_state"], masks)
    swa = next((v for k, v in ckpt["callbacks"].items() if k.startswith("StochasticWeightAveraging")), None)
    if swa is not None and swa["average_model_state"] is not None:
        found["last.ckpt SWA average"] = _pruned_in_state(swa["average_model_state"], masks)
    for i, average in enumerate(_compat.averaged_models(trainer)):  # read as anyone reads them
        found[f"averaged copy {i} state_dict"] = _pruned_in_state(average.state_dict(), masks)
    trainer.test(model, verbose=False)  # after a `.data` write at test epoch start
    found["test forwards"] = sum(model.seen["test"])
    assert len(model.seen["test"]) == 2
    assert found == dict.fromkeys(found, 0)
