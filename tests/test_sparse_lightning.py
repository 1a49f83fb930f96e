"""Sparse execution in a Lightning fit: the optimizers train the compact values, checkpoints stay dense and
strict-loadable, and a resumed run switches the same layers before the compact optimizer state is restored."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_prune_init import PruneAtInitCallback
from lightning_prune_init.callbacks.sparse_execution import resume_sparse_execution, switch_to_sparse_execution
from lightning_prune_init.sparse import SparseExecutionReport, sparse_modules

from tests.helpers import Classifier, random_data, trainer_kwargs

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

LAYERS = ["net.1.weight", "net.3.weight", "net.5.weight"]


class InOrder(Classifier):
    """Batches in a fixed order, so a resumed run sees what an uninterrupted one sees."""

    def train_dataloader(self):
        return DataLoader(random_data(self.n, self.shape), batch_size=self.batch_size, shuffle=False)


class SparseSwitch(pl.Callback):
    """What PruneAtInitCallback does with its `sparse_execution` option (placed after it: masks attached)."""

    def __init__(self, mode="on", **options):
        self.mode, self.options = mode, options
        self.saved = self.restored = None

    def on_fit_start(self, trainer, pl_module):
        if trainer.ckpt_path is not None:
            self.saved = resume_sparse_execution(trainer, pl_module, self.restored, self.mode)
        else:
            self.saved = switch_to_sparse_execution(trainer, pl_module, self.mode, options=self.options, verbose=False)

    def state_dict(self):
        return {} if self.saved is None else {"sparse_execution": self.saved}

    def load_state_dict(self, state_dict):
        self.restored = state_dict.get("sparse_execution")


def _fit(tmp_path, model, callbacks, ckpt_path=None, **overrides):
    pl.seed_everything(0)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, **overrides), callbacks=callbacks)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def _close(actual, expected, rtol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def test_fit_trains_the_compact_values_and_checkpoints_stay_dense(tmp_path):
    pl.seed_everything(0)
    dense, sparse = Classifier(), Classifier()
    sparse.load_state_dict(dense.state_dict())
    pruner = PruneAtInitCallback(0.9, masking={"scope": "layerwise"}, verbose=False)
    _fit(tmp_path / "dense", dense, [PruneAtInitCallback(0.9, masking={"scope": "layerwise"}, verbose=False)])
    switch = SparseSwitch("on")
    trainer = _fit(tmp_path / "sparse", sparse, [pruner, switch])
    masks = pruner.masks
    assert list(sparse_modules(sparse)) == LAYERS and switch.saved["mode"] == "on"
    # the rebuilt optimizer holds the nnz-sized values, and its state is nnz-sized
    optimizer = trainer.optimizers[0]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name in LAYERS:
        values = sparse.get_submodule(name[:-7]).weight_values
        assert id(values) in held
        assert optimizer.state[values]["momentum_buffer"].shape == (int(masks[name].sum()),)
    assert all(p.dim() <= 1 for group in optimizer.param_groups for p in group["params"])
    # the same training as the masked dense run
    for name, tensor in dense.state_dict().items():
        _close(sparse.state_dict()[name], tensor)
    # the checkpoint: dense keys, exact zeros, strict into a plain model, loadable with weights_only
    path = tmp_path / "sparse.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    assert list(state) == list(Classifier().state_dict())
    assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in masks.items())
    Classifier().load_state_dict(state, strict=True)
    saved = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("SparseSwitch"))["sparse_execution"]
    assert SparseExecutionReport.from_dict(saved).decisions == {n: True for n in LAYERS}


def test_resume_switches_the_same_layers_and_ends_bit_identical(tmp_path):
    def run(max_epochs, ckpt_path=None, root="run"):
        pl.seed_everything(0)
        model = InOrder()
        pruner, switch = PruneAtInitCallback(0.9, verbose=False), SparseSwitch("auto", threshold=1e9, rounds=1)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / root, save_last=True)
        kwargs = dict(max_steps=-1, max_epochs=max_epochs, enable_checkpointing=True)
        trainer = _fit(tmp_path / root, model, [pruner, switch, checkpoint], ckpt_path, **kwargs)
        return model, trainer, pruner, switch

    straight, straight_trainer, straight_pruner, straight_switch = run(2, root="straight")
    first_switch = run(1, root="first")[3]
    resumed, trainer, pruner, switch = run(2, tmp_path / "first" / "last.ckpt", root="resumed")
    assert trainer.global_step == straight_trainer.global_step == 8
    assert switch.saved == first_switch.saved  # the report of the first fit, its timings included
    assert SparseExecutionReport.from_dict(switch.saved).decisions == {n: True for n in LAYERS}
    assert list(sparse_modules(resumed)) == LAYERS
    for name, mask in straight_pruner.masks.items():
        assert torch.equal(pruner.masks[name], mask)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name  # bit-identical values
    momentum = [trainer.optimizers[0].state[p]["momentum_buffer"] for p in resumed.parameters()]
    expected = [straight_trainer.optimizers[0].state[p]["momentum_buffer"] for p in straight.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected))
    last = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert all(torch.count_nonzero(last["state_dict"][n][~m]) == 0 for n, m in pruner.masks.items())


def test_resume_never_mixes_dense_and_compact_optimizer_state(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "dense", save_last=True)
    _fit(tmp_path / "a", Classifier(), [PruneAtInitCallback(0.9, verbose=False), checkpoint], enable_checkpointing=True)
    model = Classifier()
    with pytest.warns(UserWarning, match="not turned on when resuming from a checkpoint saved without it"):
        _fit(tmp_path / "b", model, [PruneAtInitCallback(0.9, verbose=False), SparseSwitch("on")],
             tmp_path / "dense" / "last.ckpt", max_steps=6)
    assert not sparse_modules(model)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "sparse", save_last=True)
    _fit(tmp_path / "c", Classifier(), [PruneAtInitCallback(0.9, verbose=False), SparseSwitch("on"), checkpoint],
         enable_checkpointing=True)
    model = Classifier()
    with pytest.warns(UserWarning, match="trained with 'on': its layers are switched as they were"):
        _fit(tmp_path / "d", model, [PruneAtInitCallback(0.9, verbose=False), SparseSwitch("off")],
             tmp_path / "sparse" / "last.ckpt", max_steps=6)
    assert list(sparse_modules(model)) == LAYERS


def test_ema_weight_averaging_averages_the_compact_values_and_checkpoints_stay_dense(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    pl.seed_everything(0)
    model = Classifier()
    pruner, ema = PruneAtInitCallback(0.9, verbose=False), EMAWeightAveraging(decay=0.5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ema", save_last=True)
    trainer = _fit(tmp_path, model, [pruner, SparseSwitch("on"), ema, checkpoint], enable_checkpointing=True, max_steps=4)
    average = ema._average_model.module
    assert list(sparse_modules(average)) == list(sparse_modules(model)) == LAYERS
    saved = torch.load(tmp_path / "ema" / "last.ckpt", weights_only=True)
    for name in LAYERS:  # the average differs from the current weights (the model gets the average at train end)
        assert not torch.equal(saved["state_dict"][name], saved["current_model_state"][name])
    for state in (saved["state_dict"], saved["current_model_state"]):  # the average, and the current weights
        assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in pruner.masks.items())
        Classifier().load_state_dict(state, strict=True)
    assert torch.equal(saved["state_dict"]["net.1.weight"], average.state_dict()["net.1.weight"])
    assert trainer.global_step == 4
    resumed = Classifier()
    ema2 = EMAWeightAveraging(decay=0.5)
    _fit(tmp_path / "again", resumed, [PruneAtInitCallback(0.9, verbose=False), SparseSwitch("on"), ema2],
         tmp_path / "ema" / "last.ckpt", max_steps=6)
    assert list(sparse_modules(ema2._average_model.module)) == LAYERS


@pytest.mark.parametrize("ema_first", [False, True], ids=["pruner-then-ema", "ema-then-pruner"])
def test_the_callbacks_own_sparse_execution_with_ema_switches_the_average_too(tmp_path, ema_first):
    """Before: the pruner switched the averaged copy first, then attached the masks to it, and apply_masks refused
    the switched layers' ``weight`` (ValueError: mask key 'net.1.weight' is not a parameter)."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    pl.seed_everything(0)
    model = Classifier()
    pruner, ema = PruneAtInitCallback(0.9, sparse_execution="on", verbose=False), EMAWeightAveraging(decay=0.5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ema", save_last=True)
    callbacks = [ema, pruner, checkpoint] if ema_first else [pruner, ema, checkpoint]
    trainer = _fit(tmp_path, model, callbacks, enable_checkpointing=True, max_steps=4)
    assert trainer.global_step == 4
    assert list(sparse_modules(ema._average_model.module)) == list(sparse_modules(model)) == LAYERS
    saved = torch.load(tmp_path / "ema" / "last.ckpt", weights_only=True)
    for state in (saved["state_dict"], saved["current_model_state"]):
        assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in pruner.masks.items())
        Classifier().load_state_dict(state, strict=True)
