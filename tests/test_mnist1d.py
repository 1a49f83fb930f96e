"""MNIST-1D: generated offline (network blocked), the benchmark's published shapes, seeded, cached, no RNG side
effects; its 1-D CNN and the papers' MLPs on 40-value inputs; a short Lightning fit from the command line."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch

from lightning_prune_init.papers import (
    MLP,
    ConvNet1D,
    ImageClassifier,
    LeNet300,
    MNIST1DDataModule,
    build_network,
    count_weights,
    load_mnist1d,
)


@pytest.fixture
def no_network(monkeypatch):
    """Every way to open a connection raises: a download attempt fails loudly instead of passing unnoticed."""
    def blocked(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, blocked)


def test_builds_offline_with_the_published_shapes(no_network, tmp_path) -> None:
    # A seed no other test uses, so the data are generated here, under the blocked network.
    dm = MNIST1DDataModule(val_fraction=0.0, seed=1234, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    x, y = dm.train_dataset.tensors
    x_test, y_test = dm.test_dataset.tensors
    assert x.shape == (4000, 1, 40) and x_test.shape == (1000, 1, 40) and dm.dims == (1, 40)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == set(y_test.tolist()) == set(range(10)) and dm.num_classes == 10
    assert len(dm.val_dataset) == 0
    assert len(list(tmp_path.glob("mnist1d_n5000_seed1234_*.npz"))) == 1
    # The generator centres and scales the data set as a whole (train and test together).
    both = torch.cat([x.flatten(), x_test.flatten()]).double()
    assert abs(float(both.mean())) < 1e-6 and abs(float(both.std()) - 1) < 1e-3


def test_default_data_are_the_benchmarks_seed_42() -> None:
    data = load_mnist1d()
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    # Class counts of the benchmark's split with seed 42 (500 per class in all, shuffled).
    assert np.bincount(data["y"]).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
    assert np.bincount(data["y_test"]).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]
    np.testing.assert_allclose(data["x"][0, :3], [-0.33200567, -0.47191037, -0.77869708], rtol=1e-6)
    np.testing.assert_allclose(data["x"][1, :2], [1.96548088, 2.30021254], rtol=1e-6)


def test_generation_leaves_global_random_streams_alone() -> None:
    # mnist1d's make_dataset calls random.seed and np.random.seed; the caller's streams must not notice.
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    load_mnist1d(num_samples=30, seed=77)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_seeded_split_and_copies() -> None:
    a, b = MNIST1DDataModule(), MNIST1DDataModule()
    a.setup()
    b.setup()
    assert {k: len(v) for k, v in a.split_indices.items()} == {"train": 3600, "val": 400, "test": 1000}
    assert not set(a.split_indices["train"]) & set(a.split_indices["val"])
    assert sorted([*a.split_indices["train"], *a.split_indices["val"]]) == list(range(4000))
    assert torch.equal(a.train_dataset.tensors[0], b.train_dataset.tensors[0])
    full = load_mnist1d()
    assert torch.equal(a.val_dataset.tensors[0][:, 0], torch.from_numpy(full["x"][a.split_indices["val"]]))
    # Changing what one caller got changes neither the cache nor another caller's data.
    a.train_dataset.tensors[0].zero_()
    full["x"][:] = 0
    c = MNIST1DDataModule()
    c.setup()
    assert torch.equal(c.train_dataset.tensors[0], b.train_dataset.tensors[0])
    assert float(c.train_dataset.tensors[0].abs().sum()) > 0 and float(np.abs(load_mnist1d()["x"]).sum()) > 0
    x, y = next(iter(b.train_dataloader()))
    assert x.shape == (100, 1, 40) and y.shape == (100,)


def test_disk_cache_is_written_and_a_broken_file_replaced(tmp_path) -> None:
    data = load_mnist1d(num_samples=40, seed=3, cache_dir=tmp_path)
    (path,) = tmp_path.glob("mnist1d_n40_seed3_*.npz")
    with np.load(path) as stored:
        assert all(np.array_equal(stored[k], data[k]) for k in data)
    path.write_bytes(b"not an npz file")
    again = load_mnist1d(num_samples=40, seed=3, cache_dir=tmp_path)
    assert all(np.array_equal(again[k], data[k]) for k in data)
    with np.load(path) as stored:
        assert np.array_equal(stored["x"], data["x"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 55}, ValueError, "multiple of 10"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"val_fraction": 1.0}, ValueError, "val_fraction"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"cache_dir": 3}, TypeError, "cache_dir"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        MNIST1DDataModule(**kwargs)


# ----------------------------------------------------------------------------- networks on 40 inputs


def test_conv1d_net_structure_and_counts() -> None:
    net = ConvNet1D()
    assert [tuple(m.weight.shape) for m in (net.conv1, net.conv2, net.conv3, net.fc)] == [
        (25, 1, 5), (25, 25, 3), (25, 25, 3), (10, 125)]
    assert count_weights(net) == 25 * 5 + 2 * 25 * 25 * 3 + 125 * 10 == 5125
    assert sum(p.numel() for p in net.parameters()) == 5125 + 3 * 25 + 10
    x = torch.randn(3, 1, 40)
    h = torch.relu(net.conv1(x))
    assert h.shape == (3, 25, 19)
    h = torch.relu(net.conv3(torch.relu(net.conv2(h))))
    assert h.shape == (3, 25, 5)
    torch.testing.assert_close(net(x), net.fc(h.flatten(1)))
    torch.testing.assert_close(net(x[:, 0]), net(x))  # [N, 40] is read as one channel
    assert build_network("conv1d", input_length=50).fc.in_features == 25 * 6
    with pytest.raises(ValueError, match="input_length"):
        ConvNet1D(input_length=2)


def test_papers_mlps_take_forty_inputs() -> None:
    mlp = MLP(depth=7, activation="tanh", input_shape=(1, 40))
    assert mlp.input_shape == (1, 40) and mlp.fc1.weight.shape == (100, 40)
    assert count_weights(mlp) == 40 * 100 + 5 * 100 * 100 + 100 * 10 == 55_000
    lenet = LeNet300(input_shape=[1, 40])
    assert lenet.input_shape == (1, 40) and count_weights(lenet) == 40 * 300 + 300 * 100 + 100 * 10
    x = torch.randn(4, 1, 40)
    torch.testing.assert_close(mlp(x), mlp(x.flatten(1)))
    # The default build is unchanged by the new argument.
    torch.manual_seed(0)
    a = MLP(depth=3)
    torch.manual_seed(0)
    b = MLP(depth=3, input_shape=(1, 28, 28))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(TypeError, match="input_shape"):
        MLP(input_shape=40)
    with pytest.raises(ValueError, match="input_shape"):
        LeNet300(input_shape=(1, 0))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_short_names_fit_conv1d_on_mnist1d_from_the_command_line(tmp_path, monkeypatch) -> None:
    import sys

    from lightning_prune_init.cli import run_cli

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    cli = run_cli([
        "fit", "--model=ImageClassifier", "--model.network=conv1d", "--data=MNIST1DDataModule",
        "--data.num_samples=200", "--trainer.max_steps=3", "--trainer.logger=false", "--test_after_fit=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={tmp_path}", "--seed_everything=0",
    ])
    assert isinstance(cli.model, ImageClassifier) and isinstance(cli.model.network, ConvNet1D)
    assert cli.trainer.global_step == 3 and len(cli.datamodule.train_dataset) == 144
