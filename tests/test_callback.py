"""PruneAtInitCallback in real fits: pruning, logging, resume, weights-only checkpoints, errors."""

import copy
import csv
import glob

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_prune_init import PruneAtInitCallback, get_masks
from lightning_prune_init.callbacks import Init
from lightning_prune_init.selection import LayerCollapseError
from lightning_prune_init.scoring import ScoringInputError

from tests.helpers import Classifier, conv_bn_net, lenet300, trainer_kwargs


class Recorder(pl.Callback):
    """Records the masks and weights seen at fit start (after PruneAtInitCallback) and the batches trained on."""

    def on_fit_start(self, trainer, pl_module):
        self.masks = {n: m.clone() for n, m in get_masks(pl_module).items()}
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def _zeros_ok(module, masks):
    return all(torch.count_nonzero(module.get_parameter(n)[~m]) == 0 for n, m in masks.items())


def test_fit_prunes_exact_count_and_logs_density(tmp_path):
    pl.seed_everything(0)
    model = Classifier()
    logger = CSVLogger(tmp_path, name="run")
    callback = PruneAtInitCallback(sparsity=0.9)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, max_steps=5, log_every_n_steps=1), callbacks=[callback])
    trainer.fit(model)
    masks = get_masks(model)
    assert set(masks) == {"net.1.weight", "net.3.weight", "net.5.weight"}
    assert sum(int(m.sum()) for m in masks.values()) == round(266_200 * 0.1)
    assert _zeros_ok(model, masks)
    logger.save()
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "run" / "*" / "metrics.csv"))[0])))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("prune/") and v}
    assert logged["prune/density"] == pytest.approx(0.1, abs=1e-6)
    assert logged["prune/density/net.1.weight"] == pytest.approx(float(masks["net.1.weight"].float().mean()))


def test_masks_equal_functional_scoring_on_the_same_batch(tmp_path):
    from lightning_prune_init import connection_sensitivity, select_masks

    pl.seed_everything(0)
    model = Classifier(n=32, batch_size=32)
    reference = copy.deepcopy(model)
    recorder = Recorder()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[PruneAtInitCallback(0.95), recorder])
    trainer.fit(model)
    x, y = model.train_dataloader().dataset.tensors  # one batch holds the whole (shuffled) set
    expected = select_masks(connection_sensitivity(reference, [(x, y)]), 0.95)
    for n, m in expected.items():
        # shuffling changes the order inside the batch, not the mean loss: masks agree up to float ties
        assert int((recorder.masks[f"{n}"] != m).sum()) <= 2


def test_scoring_leaves_training_run_unchanged(tmp_path):
    """Same seed: training with sparsity=0 pruning equals training without the callback, bit for bit."""
    results = []
    for callbacks in ([], [PruneAtInitCallback(0.0, verbose=False)]):
        pl.seed_everything(7)
        model = Classifier(net=conv_bn_net(), shape=(1, 12, 12))
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=4), callbacks=callbacks)
        trainer.fit(model)
        results.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_resume_restores_masks_bit_identically_without_rescoring(tmp_path, monkeypatch):
    pl.seed_everything(0)
    model = Classifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_steps=4, enable_checkpointing=True), callbacks=[PruneAtInitCallback(0.9), checkpoint]
    )
    trainer.fit(model)
    masks = {n: m.clone() for n, m in get_masks(model).items()}
    ckpt_path = str(tmp_path / "ckpt" / "last.ckpt")
    saved = torch.load(ckpt_path, weights_only=False)
    assert _zeros_ok_state(saved["state_dict"], masks)

    # a plain model of the same class loads the checkpoint strictly, without this package
    plain = Classifier()
    plain.load_state_dict(saved["state_dict"], strict=True)
    assert _zeros_ok(plain, masks)
    assert Classifier.load_from_checkpoint(ckpt_path, strict=True) is not None

    # resume: the masks come from the checkpoint; scoring must not run again
    import lightning_prune_init.callbacks.pruning as module

    monkeypatch.setattr(module, "criterion_masks", lambda *a, **k: pytest.fail("re-scored on resume"))
    pl.seed_everything(1)  # a different init and data order would give other masks if pruning ran again
    resumed = Classifier()
    recorder = Recorder()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=8), callbacks=[PruneAtInitCallback(0.9), recorder])
    trainer.fit(resumed, ckpt_path=ckpt_path)
    assert recorder.masks.keys() == masks.keys()
    assert all(torch.equal(recorder.masks[n], masks[n]) for n in masks)
    assert trainer.global_step == 8
    assert _zeros_ok(resumed, masks)


def _zeros_ok_state(state_dict, masks):
    return all(torch.count_nonzero(state_dict[n][~m]) == 0 for n, m in masks.items())


def test_weights_only_checkpoint_never_gives_a_silently_different_mask(tmp_path):
    pl.seed_everything(0)
    model = Classifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "w", save_last=True, save_weights_only=True)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_steps=3, enable_checkpointing=True), callbacks=[PruneAtInitCallback(0.9), checkpoint]
    )
    trainer.fit(model)
    masks = get_masks(model)
    path = str(tmp_path / "w" / "last.ckpt")
    assert "callbacks" not in torch.load(path, weights_only=False)

    # on_missing_state="error": a clear refusal, before any training
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=6), callbacks=[PruneAtInitCallback(0.9, policies={"on_missing_state": "error"})])
    with pytest.raises(RuntimeError, match="holds no PruneAtInitCallback state"):
        trainer.fit(Classifier(), ckpt_path=path)

    # the default rebuilds the exact masks from the zeros (Lightning then refuses to resume training state
    # from a weights-only file; the masks seen at fit start are what matters here)
    recorder = Recorder()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=6), callbacks=[PruneAtInitCallback(0.9), recorder])
    with pytest.raises(Exception):
        trainer.fit(Classifier(), ckpt_path=path)
    assert all(torch.equal(recorder.masks[n], masks[n]) for n in masks)

    # a different sparsity cannot be reconciled with the zeros: refused, not re-pruned
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=6), callbacks=[PruneAtInitCallback(0.8)])
    with pytest.raises(RuntimeError, match="do not match the keep count"):
        trainer.fit(Classifier(), ckpt_path=path)


def test_second_fit_keeps_the_masks(tmp_path):
    pl.seed_everything(0)
    model = Classifier()
    callback = PruneAtInitCallback(0.9)
    pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2), callbacks=[callback]).fit(model)
    first = {n: m.clone() for n, m in get_masks(model).items()}
    pl.Trainer(**trainer_kwargs(tmp_path, max_steps=4), callbacks=[PruneAtInitCallback(0.5)]).fit(model)
    assert all(torch.equal(get_masks(model)[n], first[n]) for n in first)
    assert _zeros_ok(model, first)


def test_label_free_and_data_free(tmp_path):
    for supervision in ("label_free", "data_free"):
        pl.seed_everything(0)
        model = Classifier()
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2), callbacks=[PruneAtInitCallback(0.9, supervision=supervision)])
        trainer.fit(model)
        masks = get_masks(model)
        assert sum(int(m.sum()) for m in masks.values()) == round(266_200 * 0.1)
    # data-free masks do not depend on the data, only on the noise seed
    runs = []
    for n in (16, 48):
        pl.seed_everything(0)
        model = Classifier(n=n)
        cb = PruneAtInitCallback(0.9, supervision="data_free", scoring={"noise_seed": 3, "noise_batch_size": 8})
        pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[cb]).fit(model)
        runs.append(cb.masks)
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def _unchanged(model, before):
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and get_masks(model) == {}


def test_errors_leave_the_model_unchanged(tmp_path):
    with pytest.raises(ValueError, match=r"`sparsity` must be a finite number in \[0, 1\)"):
        PruneAtInitCallback(sparsity=1.0)
    with pytest.raises(ValueError, match="`masking.scope` must be one of"):
        PruneAtInitCallback(masking={"scope": "local"})

    cases = [
        (PruneAtInitCallback(0.9, parameters="encoder.*"), ValueError, "matches no parameter"),
        (PruneAtInitCallback(0.9, parameters={"exclude": ["*"]}), ValueError, "no prunable parameters"),
        (PruneAtInitCallback(0.999, policies={"on_layer_collapse": "error"}, parameters={"exclude": ["net.1.*"]}), LayerCollapseError, "pruned entirely"),
    ]
    for callback, error, message in cases:
        pl.seed_everything(0)
        model = Classifier()
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(error, match=message):
            pl.Trainer(**trainer_kwargs(tmp_path), callbacks=[callback]).fit(model)
        assert _unchanged(model, before)

    class DictBatches(Classifier):
        def train_dataloader(self):
            data = super().train_dataloader()
            return [{"image": x, "label": y} for x, y in data]

    pl.seed_everything(0)
    model = DictBatches()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ScoringInputError, match="loss_fn"):
        pl.Trainer(**trainer_kwargs(tmp_path), callbacks=[PruneAtInitCallback(0.9)]).fit(model)
    assert _unchanged(model, before)

    pl.seed_everything(0)
    model = Classifier()
    with torch.no_grad():
        model.net[1].weight[0, 0] = float("inf")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="scores would not be finite"):
        pl.Trainer(**trainer_kwargs(tmp_path), callbacks=[PruneAtInitCallback(0.9)]).fit(model)
    assert _unchanged(model, before)


def test_layer_collapse_warns_by_default(tmp_path):
    pl.seed_everything(0)
    model = Classifier()
    with pytest.warns(UserWarning, match="pruned entirely"):
        pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[PruneAtInitCallback(0.9999)]).fit(model)


def test_sharded_strategy_is_refused():
    from lightning.pytorch.strategies import FSDPStrategy

    class FakeTrainer:
        strategy = FSDPStrategy.__new__(FSDPStrategy)

    with pytest.raises(MisconfigurationException, match="Supported: single device, DDP"):
        PruneAtInitCallback(0.9).setup(FakeTrainer(), None, "fit")


def test_init_and_isometry_repair_in_a_fit(tmp_path):
    from lightning_prune_init import orthogonality_error
    from lightning_prune_init.callbacks import IsometryRepair

    stages = []

    class Stages(pl.Callback):
        def on_prune_stage(self, trainer, pl_module, stage):
            stages.append((stage, {n: p.detach().clone() for n, p in pl_module.named_parameters()}))

    pl.seed_everything(0)
    model = Classifier(net=conv_bn_net(), shape=(1, 12, 12))
    callback = PruneAtInitCallback(0.8, init=Init("orthogonal", seed=3, zero_biases=True), isometry=IsometryRepair(solver="cg", steps=200))
    logger = CSVLogger(tmp_path, name="iso")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, max_steps=2), callbacks=[callback, Stages()])
    trainer.fit(model)
    assert [s for s, _ in stages] == ["after_init", "after_pruning", "after_repair"]
    after_init = stages[0][1]
    # block-orthogonal re-init (c_in=1 <= c_out=8): the circular convolution preserves the norm of any input
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), after_init["net.0.weight"])
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-4, rtol=0)
    # the linear classifier (10 x 64) has orthonormal rows
    w = after_init["net.10.weight"]
    torch.testing.assert_close(w @ w.T, torch.eye(10), atol=1e-5, rtol=0)
    assert torch.count_nonzero(after_init["net.0.bias"]) == 0
    report = callback.isometry_report
    assert set(report.layers) == {"net.0.weight", "net.4.weight", "net.10.weight"}
    masks = get_masks(model)
    # the repair lowered the error (per layer, never below the best possible) and kept pruned entries at 0
    pruned_weights, repaired = stages[1][1], stages[2][1]
    before = {n: float(orthogonality_error(pruned_weights[n], masks[n])) for n in masks}
    after = {n: float(orthogonality_error(repaired[n], masks[n])) for n in masks}
    for name, layer in report.layers.items():
        assert layer.error_after <= layer.error_before + 1e-6
        assert layer.error_after >= layer.best_possible - 1e-4
        assert after[name] == pytest.approx(layer.error_after, abs=1e-4)
        assert before[name] == pytest.approx(layer.error_before, abs=1e-4)
        assert torch.count_nonzero(repaired[name][~masks[name]]) == 0
    assert sum(after.values()) < 0.5 * sum(before.values())
    logger.save()
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "iso" / "*" / "metrics.csv"))[0])))
    assert any(row.get("isometry/error_after/net.4.weight") for row in rows)



def _fit_masks(tmp_path, **kwargs):
    pl.seed_everything(0)
    model = Classifier()
    callback = PruneAtInitCallback(0.9, verbose=False, **kwargs)
    pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback]).fit(model)
    return model, callback


def test_ablations_change_only_what_they_claim(tmp_path):
    base_model, base = _fit_masks(tmp_path)
    base_masks = base.masks
    counts = {n: int(m.sum()) for n, m in base_masks.items()}
    for ablation in ("shuffle", "random"):
        _, cb = _fit_masks(tmp_path, masking={"ablation": ablation, "ablation_seed": 1})
        assert {n: int(m.sum()) for n, m in cb.masks.items()} == counts  # same per-layer density
        assert all(not torch.equal(cb.masks[n], base_masks[n]) for n in counts)  # other positions
        _, again = _fit_masks(tmp_path, masking={"ablation": ablation, "ablation_seed": 1})
        assert all(torch.equal(cb.masks[n], again.masks[n]) for n in counts)  # deterministic under a seed
    _, inverted = _fit_masks(tmp_path, masking={"ablation": "invert"})
    assert sum(int(m.sum()) for m in inverted.masks.values()) == sum(counts.values())
    assert all(not (inverted.masks[n] & base_masks[n]).any() for n in counts)  # the lowest scores, not the highest

    pl.seed_everything(0)
    model = Classifier()
    recorder = Recorder()
    reinit = PruneAtInitCallback(0.9, verbose=False, masking={"ablation": "reinit"}, init=Init("orthogonal", seed=0))
    plain = PruneAtInitCallback(0.9, verbose=False, init=Init("orthogonal", seed=0))
    weights = []
    for callback in (plain, reinit):
        pl.seed_everything(0)
        model, recorder = Classifier(), Recorder()
        pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback, recorder]).fit(model)
        weights.append(recorder)
    for n, m in weights[0].masks.items():
        assert torch.equal(weights[0].masks[n], weights[1].masks[n])  # the mask is kept
        kept0, kept1 = weights[0].weights[n][m], weights[1].weights[n][m]
        assert bool((kept0 != kept1).all())  # every kept value is re-drawn
        assert torch.count_nonzero(weights[1].weights[n][~m]) == 0
    assert torch.equal(weights[0].weights["net.1.bias"], weights[1].weights["net.1.bias"])  # nothing else changes


def test_criteria_through_the_callback_and_density_profile(tmp_path):
    import json

    for criterion, options in [("synflow", {"rounds": 5}), ("grasp", None), ("magnitude", None), ("random", None),
                               ("iterative_snip", {"rounds": 3})]:
        model, cb = _fit_masks(tmp_path, criterion=criterion, scoring={"options": options})
        assert sum(int(m.sum()) for m in cb.masks.values()) == round(266_200 * 0.1), criterion
    with pytest.raises(ValueError, match="criterion"):
        PruneAtInitCallback(0.9, criterion="snipp")

    pl.seed_everything(0)
    model = Classifier()
    callback = PruneAtInitCallback(0.9, verbose=False, masking={"min_density": 0.05})
    logger = CSVLogger(tmp_path / "profile")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path / "profile", max_steps=1, logger=logger), callbacks=[callback])
    trainer.fit(model)
    (path,) = glob.glob(str(tmp_path / "profile" / "**" / "prune_density-*.json"), recursive=True)
    assert path == callback.density_profile_path
    profile = json.load(open(path))
    masks = get_masks(model)
    for name, row in profile["layers"].items():
        assert row["kept"] == int(masks[name].sum()) and row["total"] == masks[name].numel()
        assert row["density"] >= 0.05
        dead = int((~masks[name].any(dim=1)).sum())
        assert row["dead_units"] == dead
    assert profile["config"]["masking"]["min_density"] == 0.05
    assert open(path[: -len(".json")] + ".csv").read().startswith("parameter,kept,total,density,dead_units")
    assert callback.state_dict()["density_profile"] == profile["layers"]
