"""Issue 12 (reliability) and the callback-level points of issue 11: verified restore, optimizer state after a
restore, nothing changed before an error, serializable settings, profiles in the run's folder, warnings only when
settings differ; unselected tensors untouched; exact zeros with weight averaging and ``.data`` writes."""

import copy
import glob
import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from lightning_prune_init import PruneAtInitCallback, get_masks
from lightning_prune_init.callbacks.state import CheckpointStateError
from lightning_prune_init.masks import pack_masks

from tests.helpers import Classifier, conv_bn_net, trainer_kwargs


def _fit(tmp_path, callback, model=None, ckpt_path=None, extra=(), **kwargs):
    model = model if model is not None else Classifier()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, **kwargs), callbacks=[callback, *extra])
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, trainer


def _checkpointed_run(tmp_path, optimizer="sgd", steps=4, **callback_kwargs):
    pl.seed_everything(0)
    model = Classifier(optimizer=optimizer)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=steps, enable_checkpointing=True),
                         callbacks=[PruneAtInitCallback(0.9, verbose=False, **callback_kwargs), ckpt])
    trainer.fit(model)
    return model, str(tmp_path / "ckpt" / "last.ckpt")


def _tampered(path, edit, name="tampered.ckpt"):
    ckpt = torch.load(path, weights_only=False)
    edit(ckpt)
    out = os.path.join(os.path.dirname(path), name)
    torch.save(ckpt, out)
    return out


def _state(ckpt):
    (key,) = [k for k in ckpt["callbacks"] if "PruneAtInitCallback" in k]
    return ckpt["callbacks"][key]


def _resume(tmp_path, path, steps=6, **callback_kwargs):
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=steps),
                         callbacks=[PruneAtInitCallback(0.9, verbose=False, **callback_kwargs)])
    model = Classifier()
    trainer.fit(model, ckpt_path=path)
    return model


# --- verified restore -------------------------------------------------------------------------------------------
def test_altered_mask_bits_are_refused_naming_the_layer_and_the_checkpoint(tmp_path):
    _, path = _checkpointed_run(tmp_path)

    def flip(ckpt):
        bits = _state(ckpt)["masks"]["masks"]["net.3.weight"]["bits"]
        bits[:4] = ~bits[:4]  # same length, other entries kept and pruned

    bad = _tampered(path, flip)
    with pytest.raises(CheckpointStateError, match=r"net\.3\.weight") as err:
        _resume(tmp_path, bad)
    assert "tampered.ckpt" in str(err.value) and "fresh run" in str(err.value)


def test_a_missing_layer_mask_is_refused(tmp_path):
    _, path = _checkpointed_run(tmp_path)
    bad = _tampered(path, lambda ckpt: _state(ckpt)["masks"]["masks"].pop("net.5.weight"))
    with pytest.raises(CheckpointStateError, match=r"no mask for net\.5\.weight"):
        _resume(tmp_path, bad)


@pytest.mark.parametrize("cut", [1, -1])
def test_truncated_or_overlong_bits_are_refused_clearly(tmp_path, cut):
    _, path = _checkpointed_run(tmp_path)

    def edit(ckpt):
        entry = _state(ckpt)["masks"]["masks"]["net.1.weight"]
        entry["bits"] = entry["bits"][:-cut] if cut > 0 else torch.cat([entry["bits"], entry["bits"][:1]])

    with pytest.raises(CheckpointStateError, match=r"net\.1\.weight"):
        _resume(tmp_path, _tampered(path, edit))


def test_restored_weights_must_be_zero_where_the_masks_prune(tmp_path):
    model, path = _checkpointed_run(tmp_path)
    masks = get_masks(model)

    def revive(ckpt):
        w = ckpt["state_dict"]["net.1.weight"]
        w[~masks["net.1.weight"]] = 0.5

    with pytest.raises(CheckpointStateError, match=r"not zero where the masks prune: net\.1\.weight"):
        _resume(tmp_path, _tampered(path, revive))


def test_unknown_state_format_is_refused(tmp_path):
    _, path = _checkpointed_run(tmp_path)

    def edit(ckpt):
        _state(ckpt)["format"] = 99

    with pytest.raises(CheckpointStateError, match="unknown format 99"):
        _resume(tmp_path, _tampered(path, edit))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_state_nonzero_at_pruned_entries_is_zeroed_on_resume(tmp_path, optimizer):
    model, path = _checkpointed_run(tmp_path, optimizer=optimizer)
    masks = {n: m.clone() for n, m in get_masks(model).items()}
    names = [n for n, _ in model.named_parameters()]

    def poison(ckpt):
        for index, state in ckpt["optimizer_states"][0]["state"].items():
            name = names[index]
            if name in masks:
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == masks[name].shape:
                        value[~masks[name]] = 1.0

    bad = _tampered(path, poison)
    seen = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            opt = trainer.optimizers[0]
            params = dict(pl_module.named_parameters())
            for name, m in masks.items():
                p = params[name]
                seen.append(int(torch.count_nonzero(p.detach()[~m])))
                for value in opt.state[p].values():
                    if isinstance(value, torch.Tensor) and value.shape == m.shape:
                        seen.append(int(torch.count_nonzero(value[~m])))

    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=10),
                         callbacks=[PruneAtInitCallback(0.9, verbose=False), Watch()])
    trainer.fit(Classifier(optimizer=optimizer), ckpt_path=bad)
    assert trainer.global_step == 10 and len(seen) > 0
    assert sum(seen) == 0


# --- validate first, change nothing on error ---------------------------------------------------------------------
class _DictModel(Classifier):
    """Returns a dict without logits: the default loss cannot use it."""

    def forward(self, x):
        return {"features": self.net(x)}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x)["features"], y)


@pytest.mark.parametrize(
    "kwargs, model_cls, error, match",
    [
        ({"parameters": "encoder.*", "init": "orthogonal"}, Classifier, ValueError, "matches no parameter"),
        ({"masking": {"min_density": 0.5}, "init": "orthogonal"}, Classifier, ValueError, "min_density"),
        ({"init": "orthogonal"}, _DictModel, Exception, "logits"),
        ({"sparsity": None, "masking": {"pattern": "2:4"}, "parameters": {"include": ["net.5.weight"]},
          "init": "orthogonal"},
         lambda: Classifier(net=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3), torch.nn.ReLU(),
                                                    torch.nn.Linear(3, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5))),
         ValueError, "multiple of 4"),
    ],
)
def test_errors_that_need_the_model_come_before_any_change(tmp_path, kwargs, model_cls, error, match):
    pl.seed_everything(0)
    model = model_cls()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        _fit(tmp_path, PruneAtInitCallback(**{"sparsity": 0.9, "verbose": False, **kwargs}), model=model, max_steps=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert get_masks(model) == {}


def test_a_failure_after_init_rolls_back_and_a_corrected_retry_prunes_and_repairs(tmp_path):
    pl.seed_everything(0)
    model = Classifier(net=conv_bn_net(), shape=(1, 12, 12))
    before = copy.deepcopy(model.state_dict())
    calls = {"n": 0}

    def failing_repair(*args, **kwargs):
        calls["n"] += 1
        raise RuntimeError("repair exploded")

    import lightning_prune_init.callbacks.pruning as pruning

    original = pruning.approximate_isometry
    pruning.approximate_isometry = failing_repair
    try:
        with pytest.raises(RuntimeError, match="repair exploded"):
            _fit(tmp_path, PruneAtInitCallback(0.9, init="orthogonal", isometry=True, verbose=False), model=model)
    finally:
        pruning.approximate_isometry = original
    assert calls["n"] == 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the module changed although pruning failed"
    assert get_masks(model) == {}
    callback = PruneAtInitCallback(0.9, init="orthogonal", isometry=True, verbose=False)
    _fit(tmp_path, callback, model=model, max_steps=1)
    assert callback.isometry_report is not None and get_masks(model)


# --- serializable settings, profiles, warnings ----------------------------------------------------------------------
def module_level_loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def test_callables_are_stored_by_import_path_and_checkpoints_load_with_the_safe_loader(tmp_path):
    callback = PruneAtInitCallback(0.9, scoring={"loss_fn": module_level_loss}, verbose=False)
    assert callback.scoring.loss_fn == "tests.test_reliability.module_level_loss"
    with pytest.raises(ValueError, match="no import path"):
        PruneAtInitCallback(0.9, scoring={"loss_fn": lambda model, batch: 0.0})
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)
    _fit(tmp_path, callback, extra=[ckpt], enable_checkpointing=True, max_steps=2)
    loaded = torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)
    assert _state(loaded)["config"]["scoring"]["loss_fn"] == "tests.test_reliability.module_level_loss"


def test_density_profile_goes_to_the_run_folder_never_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pl.seed_everything(0)
    callback = PruneAtInitCallback(0.9, verbose=False)
    _fit(tmp_path / "run", callback, max_steps=1, enable_checkpointing=False)  # no logger, no checkpoint folder
    assert not glob.glob(str(tmp_path / "prune_density*")) and callback.density_profile_path is None
    # two runs sharing one checkpoint folder keep both profiles
    paths = []
    for seed in (0, 1):
        pl.seed_everything(seed)
        cb = PruneAtInitCallback(0.9, verbose=False)
        ckpt = ModelCheckpoint(dirpath=tmp_path / "shared")
        _fit(tmp_path / "run", cb, extra=[ckpt], enable_checkpointing=True, max_steps=1)
        paths.append(cb.density_profile_path)
    assert paths[0] != paths[1] and all(os.path.dirname(p) == str(tmp_path / "shared") for p in paths)
    assert all(os.path.exists(p) for p in paths)


def test_resume_with_the_same_settings_does_not_warn_and_other_settings_do(tmp_path):
    _, path = _checkpointed_run(tmp_path, isometry={"solver": "cg", "steps": 20})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _resume(tmp_path, path, isometry={"solver": "cg", "steps": 20})
    assert not [w for w in caught if "differ" in str(w.message)]
    with pytest.warns(UserWarning, match="differ"):
        _resume(tmp_path, path, isometry={"solver": "cg", "steps": 30})


def test_a_second_fit_with_another_sparsity_warns(tmp_path):
    pl.seed_everything(0)
    model, _ = _fit(tmp_path, PruneAtInitCallback(0.9, verbose=False), max_steps=1)
    with pytest.warns(UserWarning, match="already pruned"):
        _fit(tmp_path, PruneAtInitCallback(0.5, verbose=False), model=model, max_steps=1)


# --- issue 11: one selection, weight averaging and .data writes ----------------------------------------------------
def test_narrow_selection_with_init_and_repair_leaves_every_other_tensor_bit_identical(tmp_path):
    pl.seed_everything(0)
    model = Classifier(net=conv_bn_net(), shape=(1, 12, 12))
    before = copy.deepcopy(model.state_dict())
    callback = PruneAtInitCallback(0.8, parameters={"include": ["net.4.weight", "net.10.weight"],
                                                   "exclude": ["net.10.*"]},
                                   init="orthogonal", isometry=True, verbose=False)
    snapshot = {}

    class Grab(pl.Callback):  # runs right after PruneAtInitCallback.on_fit_start
        def on_fit_start(self, trainer, pl_module):
            snapshot.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1), callbacks=[callback, Grab()]).fit(model)
    assert list(get_masks(model)) == ["net.4.weight"]
    changed = [k for k in before if not torch.equal(before[k], snapshot[k])]
    assert changed == ["net.4.weight"], changed


class _WriteData(pl.Callback):
    """Writes through ``.data`` every batch: the version counter does not see it."""

    def on_train_batch_end(self, trainer, pl_module, *args):
        for p in pl_module.parameters():
            p.data.add_(0.01)


def test_ema_weight_averaging_and_data_writes_leave_exact_zeros(tmp_path):
    pl.seed_everything(0)
    model = Classifier()
    seen = []

    class Look(pl.Callback):
        def on_validation_batch_start(self, trainer, pl_module, *args):
            masks = get_masks(pl_module)
            seen.append(sum(int(torch.count_nonzero(pl_module.get_parameter(n).detach()[~m])) for n, m in masks.items()))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ema", save_last=True)
    callbacks = [PruneAtInitCallback(0.9, verbose=False), EMAWeightAveraging(update_starting_at_step=100),
                 _WriteData(), ckpt, Look()]
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=6, enable_checkpointing=True, limit_val_batches=1,
                                          val_check_interval=3), callbacks=callbacks)
    model.val_dataloader = model.train_dataloader
    model.validation_step = lambda batch, batch_idx: None
    trainer.fit(model)
    masks = get_masks(model)
    final = sum(int(torch.count_nonzero(model.get_parameter(n).detach()[~m])) for n, m in masks.items())
    saved = torch.load(tmp_path / "ema" / "last.ckpt", weights_only=False)["state_dict"]
    in_ckpt = sum(int(torch.count_nonzero(saved[n][~m])) for n, m in masks.items())
    assert final == 0 and in_ckpt == 0 and seen and all(v == 0 for v in seen), (final, in_ckpt, seen)


def test_pack_format_is_plain(tmp_path):
    packed = pack_masks({"w": torch.rand(5, 7) > 0.5})
    torch.save(packed, tmp_path / "p.pt")
    assert torch.load(tmp_path / "p.pt", weights_only=True).keys() == packed.keys()


def test_enforce_every_step_cleans_data_writes_before_each_training_forward(tmp_path):
    seen = {True: [], False: []}

    class Look(pl.Callback):
        def __init__(self, key):
            self.key = key

        def on_before_backward(self, trainer, pl_module, loss):
            # the weights the training forward just used
            masks = get_masks(pl_module)
            seen[self.key].append(
                sum(int(torch.count_nonzero(pl_module.get_parameter(n).detach()[~m])) for n, m in masks.items())
            )

    for every_step in (False, True):
        pl.seed_everything(0)
        callbacks = [PruneAtInitCallback(0.9, verbose=False, policies={"enforce_every_step": every_step}),
                     _WriteData(), Look(every_step)]
        pl.Trainer(**trainer_kwargs(tmp_path, max_steps=4), callbacks=callbacks).fit(Classifier())
    assert seen[True] == [0, 0, 0, 0]
    assert seen[False][0] == 0 and any(seen[False][1:])  # the cheap check cannot see .data writes
