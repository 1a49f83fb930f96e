"""SignalPropagationMonitor and fetch_batches in real fits: tags, values, no effect on training, state."""

import csv
import glob
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_prune_init import PruneAtInitCallback, get_masks
from lightning_prune_init.callbacks.batches import fetch_batches
from lightning_prune_init.callbacks.signal_propagation import SignalPropagationMonitor
from lightning_prune_init.spectrum import jacobian_singular_values

from tests.helpers import Classifier, conv_bn_net, random_data, trainer_kwargs

STATS = {"mean", "std", "min", "max", "mean_sq"}  # cond is left out when a value is exactly 0


def small_classifier(**kwargs):
    return Classifier(net=conv_bn_net(), shape=(1, 12, 12), **kwargs)


class RecordingMonitor(SignalPropagationMonitor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stages = []

    def on_prune_stage(self, trainer, pl_module, stage):
        self.stages.append(stage)
        super().on_prune_stage(trainer, pl_module, stage)


class AfterPruneAtInit(pl.Callback):
    """Runs right after PruneAtInitCallback's ``on_fit_start``: records the weights the monitor saw last."""

    def on_fit_start(self, trainer, pl_module):
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


class BatchRecorder(pl.Callback):
    def __init__(self):
        self.batches = []
        self.fetched = None
        self.rng_equal = None

    def on_fit_start(self, trainer, pl_module):
        rng = torch.get_rng_state()
        self.fetched = fetch_batches(trainer, pl_module, 2)
        self.rng_equal = torch.equal(rng, torch.get_rng_state())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append([t.clone() for t in batch])


def test_fetch_batches_returns_the_first_training_batches_and_leaves_no_trace(tmp_path):
    pl.seed_everything(0)
    model = small_classifier(n=64, batch_size=16)
    recorder = BatchRecorder()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2), callbacks=[recorder])
    trainer.fit(model)
    assert recorder.rng_equal
    assert len(recorder.fetched) == 2
    for fetched, trained in zip(recorder.fetched, recorder.batches):  # same shuffled order as training
        assert all(torch.equal(a, b) for a, b in zip(fetched, trained))
    with pytest.raises(ValueError, match="`num_batches`"):
        fetch_batches(trainer, model, 0)


class FetchOnce(pl.Callback):
    def __init__(self, generator=None):
        self.generator = generator

    def on_fit_start(self, trainer, pl_module):
        state = None if self.generator is None else self.generator.get_state()
        self.fetched = fetch_batches(trainer, pl_module, 3)
        self.generator_kept = state is None or torch.equal(state, self.generator.get_state())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.first = batch


def test_fetch_batches_from_a_dataloader_passed_to_fit_keeps_its_generator(tmp_path):
    generator = torch.Generator().manual_seed(5)
    loader = DataLoader(random_data(32, (1, 12, 12)), batch_size=8, shuffle=True, generator=generator)
    callback = FetchOnce(generator)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback])
    trainer.fit(small_classifier(), train_dataloaders=loader)
    assert callback.generator_kept
    assert torch.equal(callback.fetched[0][0], callback.first[0])


class TwoLoaders(Classifier):
    def train_dataloader(self):
        return {
            "a": DataLoader(random_data(32, (1, 12, 12)), batch_size=8, shuffle=True),
            "b": DataLoader(random_data(8, (1, 12, 12), seed=1), batch_size=4),
        }

    def training_step(self, batch, batch_idx):
        x, y = batch["a"]
        return torch.nn.functional.cross_entropy(self(x), y)


def test_fetch_batches_combines_several_dataloaders_like_the_fit_loop(tmp_path):
    pl.seed_everything(0)
    callback = FetchOnce()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback])
    trainer.fit(TwoLoaders(net=conv_bn_net(), shape=(1, 12, 12)))
    assert len(callback.fetched) == 3  # "max_size_cycle": the shorter loader ("b", 2 batches) cycles
    assert all(set(b) == {"a", "b"} for b in callback.fetched)
    assert callback.fetched[0]["a"][0].shape == (8, 1, 12, 12) and callback.fetched[0]["b"][0].shape == (4, 1, 12, 12)
    assert torch.equal(callback.fetched[0]["a"][0], callback.first["a"][0])


def _tb_events(log_dir):
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_documented_tags_for_every_stage(tmp_path):
    pl.seed_everything(0)
    model = small_classifier()
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = RecordingMonitor(every_n_steps=2, num_examples=4, method="exact")  # histograms everywhere
    repair = AfterPruneAtInit()
    pruning = PruneAtInitCallback(sparsity=0.9, isometry={"steps": 20}, verbose=False)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, logger=logger, max_steps=4), callbacks=[pruning, repair, monitor]
    )
    trainer.fit(model)
    events = _tb_events(logger.log_dir)
    tags = events.Tags()
    scalars, histograms, images = set(tags["scalars"]), set(tags["histograms"]), set(tags["images"])
    layers = ["net.0", "net.4", "net.10"]
    for stage in ("after_init", "after_pruning", "after_repair", "train"):
        for layer in layers:
            assert f"density/{stage}/{layer}" in scalars
            for scope in ("weights", "layerwise"):
                assert {f"jsv/{stage}/{scope}/{layer}/{s}" for s in STATS} <= scalars, (stage, scope, layer)
                assert f"jsv/{stage}/{scope}/{layer}/values" in histograms
        assert {f"jsv/{stage}/end_to_end/{s}" for s in STATS} <= scalars
        assert f"jsv/{stage}/end_to_end/values" in histograms
        assert f"jsv/{stage}/layers" in images
    assert monitor.stages == ["after_init", "after_pruning", "after_repair"]
    assert "fit_start" not in " ".join(scalars)  # PruneAtInitCallback present: its stages replace fit_start

    # during training: before the steps 0 and 2 of a 4-step run
    assert [e.step for e in events.Scalars("jsv/train/end_to_end/max")] == [0, 2]

    # values: density from the masks, weight spectra of the pruned weights, density 1 before pruning
    masks = get_masks(model)
    for layer in layers:
        (after,) = events.Scalars(f"density/after_pruning/{layer}")
        assert after.value == pytest.approx(float(masks[f"{layer}.weight"].float().mean()), abs=1e-6)
        (before,) = events.Scalars(f"density/after_init/{layer}")
        assert before.value == 1.0
        w = repair.weights[f"{layer}.weight"]
        (wmax,) = events.Scalars(f"jsv/after_repair/weights/{layer}/max")
        assert wmax.value == pytest.approx(float(torch.linalg.svdvals(w.reshape(w.shape[0], -1))[0]), rel=1e-5)
    pruned_spread = [events.Scalars(f"jsv/after_pruning/weights/{layer}/std")[0].value for layer in layers]
    repaired_spread = [events.Scalars(f"jsv/after_repair/weights/{layer}/std")[0].value for layer in layers]
    assert pruned_spread != repaired_spread  # the repair moved the weights between the two stages


def test_scalars_reach_other_loggers_with_one_warning(tmp_path):
    pl.seed_everything(0)
    model = small_classifier()
    logger = CSVLogger(tmp_path, name="csv")
    monitor = SignalPropagationMonitor(every_n_steps=1, scopes=["end_to_end"], num_examples=3)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, max_steps=3), callbacks=[monitor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert sum("TensorBoardLogger only" in str(w.message) for w in caught) == 1
    logger.save()
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "csv" / "*" / "metrics.csv"))[0])))
    steps = {int(r["step"]) for r in rows if r.get("jsv/fit_start/end_to_end/max")}
    assert steps == {0}  # no PruneAtInitCallback: one "fit_start" stage
    train_steps = sorted(int(r["step"]) for r in rows if r.get("jsv/train/end_to_end/max"))
    assert train_steps == [0, 1, 2]
    assert monitor.last_results["end_to_end"]["end_to_end"].num_examples == 3


def test_monitor_does_not_change_training(tmp_path):
    def run(with_monitor):
        pl.seed_everything(0)
        model = small_classifier(n=48, batch_size=8)
        callbacks = [PruneAtInitCallback(sparsity=0.8, verbose=False)]
        if with_monitor:
            cheap = {"power_iters": 4, "lanczos_steps": 4, "num_probes": 2}  # random probes, few products
            callbacks.append(
                SignalPropagationMonitor(
                    every_n_steps=2, num_examples=2, method="estimate", figures=False, spectrum_kwargs=cheap
                )
            )
        trainer = pl.Trainer(
            **trainer_kwargs(tmp_path, max_steps=5, deterministic=True, logger=TensorBoardLogger(tmp_path)),
            callbacks=callbacks,
        )
        trainer.fit(model)
        return model.state_dict(), torch.get_rng_state()

    plain, rng_plain = run(False)
    monitored, rng_monitored = run(True)
    assert plain.keys() == monitored.keys()
    for name in plain:  # weights and batch-norm statistics, bit for bit
        assert torch.equal(plain[name], monitored[name]), name
    assert torch.equal(rng_plain, rng_monitored)


def test_probe_is_saved_in_the_state_and_reused(tmp_path):
    pl.seed_everything(0)
    model = small_classifier()
    monitor = SignalPropagationMonitor(every_n_steps=0, scopes=["end_to_end"], num_examples=5)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[monitor])
    trainer.fit(model)
    state = monitor.state_dict()
    assert state["probe"].shape == (5, 1, 12, 12)
    x, _ = model.train_dataloader().dataset.tensors
    assert any(torch.equal(state["probe"][0], xi) for xi in x)  # real inputs

    restored = SignalPropagationMonitor(scopes=["end_to_end"], probe="noise")
    restored.load_state_dict(state)
    results, _ = restored.compute(None, model)  # no trainer, no data: the saved probe is used
    expected = jacobian_singular_values(model, state["probe"], scope="end_to_end")
    torch.testing.assert_close(results["end_to_end"]["end_to_end"].values, expected["end_to_end"].values)


def test_noise_probe_and_layer_patterns(tmp_path):
    model = small_classifier()
    monitor = SignalPropagationMonitor(probe="noise", num_examples=2, layers="net.4", seed=3)
    results, density = monitor.compute(None, model)
    assert list(results["layerwise"]) == ["net.4"] and list(results["weights"]) == ["net.4"]
    assert list(density) == ["net.4"] and density["net.4"] == 1.0
    noise = torch.randn((2, 1, 12, 12), generator=torch.Generator().manual_seed(3))
    expected = jacobian_singular_values(model, noise, layers="net.4")
    torch.testing.assert_close(results["layerwise"]["net.4"].values, expected["net.4"].values)


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="`scopes`"):
        SignalPropagationMonitor(scopes=["everything"])
    with pytest.raises(ValueError, match="`method`"):
        SignalPropagationMonitor(method="svd")
    with pytest.raises(ValueError, match="`every_n_steps`"):
        SignalPropagationMonitor(every_n_steps=-1)
    with pytest.raises(ValueError, match="`num_examples`"):
        SignalPropagationMonitor(num_examples=0)
    with pytest.raises(ValueError, match="`probe`"):
        SignalPropagationMonitor(probe="images")
    with pytest.raises(ValueError, match="`spectrum_kwargs`"):
        SignalPropagationMonitor(spectrum_kwargs={"iters": 3})
