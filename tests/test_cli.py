"""The lightning-prune-init command: every example config instantiates, the demo runs, configs round-trip."""

import glob
import os
import subprocess
import sys

import pytest
import torch
import yaml

from lightning_prune_init import PruneAtInitCallback, get_masks
from lightning_prune_init.cli import PruneInitCLI, main, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI warns when both sys.argv (pytest's) and `args` carry arguments."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "examples", "configs", "*.yaml")))


def _cli(args):
    from lightning.pytorch import LightningDataModule, LightningModule

    return PruneInitCLI(
        LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False, args=args
    )


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_every_example_config_parses_and_instantiates(config, tmp_path):
    cli = _cli(["-c", config, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])
    assert cli.model is not None and cli.datamodule is not None
    assert any(isinstance(cb, PruneAtInitCallback) for cb in cli.trainer.callbacks)


DIGITS_CONFIGS = [c for c in CONFIGS if "DigitsDataModule" in open(c).read() and not c.endswith("demo.yaml")]


@pytest.mark.slow
@pytest.mark.parametrize("config", DIGITS_CONFIGS, ids=[os.path.basename(c) for c in DIGITS_CONFIGS])
def test_digits_configs_run_a_short_fit(config, tmp_path):
    cli = run_cli([
        "fit", "-c", config, "--trainer.max_steps=3", "--trainer.logger=false", "--test_after_fit=false",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ])
    pruner = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PruneAtInitCallback))
    masks = get_masks(cli.model)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == round(total * (1 - pruner.sparsity))
    assert cli.trainer.global_step == 3


def test_demo_config_runs_a_short_fit_and_prints_summary(tmp_path, capsys):
    main([
        "fit", "-c", os.path.join(ROOT, "examples", "configs", "demo.yaml"),
        "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
    ])
    out = capsys.readouterr().out
    assert "Pruned at initialization" in out
    assert "network.fc1.weight" in out and "10.00%" in out
    assert "orth. error before repair" in out  # the repair table
    assert "Jacobian singular values" in out and "after_repair" in out and "end to end" in out
    assert "test/acc" in out
    assert "tensorboard --logdir" in out


def test_callback_from_command_line_short_name(tmp_path):
    cli = _cli([
        "--model=ImageClassifier", "--data=DigitsDataModule", "--trainer.logger=false",
        "--trainer.callbacks+=PruneAtInitCallback", "--trainer.callbacks.sparsity=0.95",
        "--trainer.callbacks.masking.scope=layerwise",
    ])
    added = [cb for cb in cli.trainer.callbacks if isinstance(cb, PruneAtInitCallback)][-1]
    assert added.sparsity == 0.95 and added.masking.scope == "layerwise"


def test_wrong_value_gives_a_readable_error_not_a_traceback(tmp_path):
    config = os.path.join(ROOT, "examples", "configs", "demo.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_prune_init.cli", "fit", "--model=ImageClassifier", "--data=DigitsDataModule",
         "--trainer.callbacks+=PruneAtInitCallback", "--trainer.callbacks.masking.scope=per_layer"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "scope" in result.stderr and "per_layer" in result.stderr


def test_print_config_round_trips(tmp_path):
    config = os.path.join(ROOT, "examples", "configs", "demo.yaml")
    printed = subprocess.run(
        [sys.executable, "-m", "lightning_prune_init.cli", "fit", "-c", config, "--print_config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=True,
    ).stdout
    dumped = tmp_path / "printed.yaml"
    dumped.write_text(printed)
    again = subprocess.run(
        [sys.executable, "-m", "lightning_prune_init.cli", "fit", "-c", str(dumped), "--print_config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=True,
    ).stdout
    assert yaml.safe_load(printed) == yaml.safe_load(again)
    # and the printed config builds the same run: same model, same callback settings, same pruning
    runs = []
    for path in (config, str(dumped)):
        cli = run_cli(["fit", "-c", path, "--trainer.logger=false", "--trainer.max_steps=1", "--test_after_fit=false",
                    f"--trainer.default_root_dir={tmp_path}"])
        runs.append(get_masks(cli.model))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_console_script_exits_zero(tmp_path):
    """`make demo` relies on the console script's exit status."""
    script = os.path.join(os.path.dirname(sys.executable), "lightning-prune-init")
    result = subprocess.run(
        [script, "fit", "-c", os.path.join(ROOT, "examples", "configs", "demo.yaml"), "--trainer.max_steps=2",
         "--trainer.logger=false", "--test_after_fit=false", f"--trainer.default_root_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["snip", "grasp", "synflow", "iterative_snip", "magnitude", "random"])
def test_every_criterion_from_yaml_and_command_line(criterion, tmp_path):
    cli = run_cli([
        "fit", "--model=ImageClassifier", "--data=DigitsDataModule", "--trainer.logger=false",
        "--trainer.max_steps=2", "--test_after_fit=false", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=PruneAtInitCallback", f"--trainer.callbacks.criterion={criterion}",
        *(['--trainer.callbacks.scoring.options={"rounds": 3}'] if criterion in ("synflow", "iterative_snip") else []),
    ])
    pruner = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PruneAtInitCallback))
    assert pruner.criterion == criterion
    masks = get_masks(cli.model)
    assert sum(int(m.sum()) for m in masks.values()) == round(266_200 * 0.1)


def test_loss_fn_by_import_path_from_the_command_line(tmp_path):
    cli = _cli([
        "--model=ImageClassifier", "--data=DigitsDataModule", "--trainer.logger=false",
        "--trainer.callbacks+=PruneAtInitCallback", "--trainer.callbacks.scoring.loss_fn=tests.helpers.dict_batch_loss",
    ])
    pruner = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PruneAtInitCallback))
    assert pruner.scoring.loss_fn == "tests.helpers.dict_batch_loss"  # stored by import path
