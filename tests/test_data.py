"""Data modules: bundled digits, and torchvision data sets read from tiny files in the real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_prune_init.papers import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_default_split_shapes_and_normalization(digits) -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.dims == (1, 28, 28)
    sizes = {k: len(v) for k, v in dm.split_indices.items()}
    assert sizes == {"train": 1797 - 180 - 359, "val": round(0.1 * 1797), "test": round(0.2 * 1797)}
    all_idx = np.concatenate([dm.split_indices[k] for k in ("train", "val", "test")])
    assert sorted(all_idx.tolist()) == list(range(1797))  # disjoint and complete

    x_train, y_train = dm.train_dataset.tensors
    assert x_train.shape == (1258, 1, 28, 28) and x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.equal(y_train, torch.from_numpy(digits.target[dm.split_indices["train"]]).long())
    # Normalised by the training split's own statistics.
    assert abs(float(x_train.mean())) < 1e-5 and abs(float(x_train.std()) - 1.0) < 1e-5
    # Stratified: each class's share of the test split within one sample of its share overall.
    counts = np.bincount(digits.target[dm.split_indices["test"]], minlength=10)
    expected = np.bincount(digits.target, minlength=10) * 359 / 1797
    assert np.all(np.abs(counts - expected) <= 1)

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,) and y.dtype == torch.int64
    assert len(dm.val_dataloader().dataset) == 180 and len(dm.test_dataloader().dataset) == 359


def test_digits_values_without_resize_or_normalization(digits) -> None:
    dm = DigitsDataModule(resize_to=None, normalize=False, seed=3)
    dm.setup()
    assert dm.dims == (1, 8, 8) and dm.mean is None
    idx = dm.split_indices["val"]
    x, y = dm.val_dataset.tensors
    assert x.shape == (len(idx), 1, 8, 8)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(digits.images[idx] / 16.0).float())
    assert torch.equal(y, torch.from_numpy(digits.target[idx]).long())
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_digits_resize_is_bilinear_on_the_scaled_image(digits) -> None:
    dm = DigitsDataModule(resize_to=32, normalize=False)
    dm.setup()
    i = int(dm.split_indices["test"][0])
    src = torch.from_numpy(digits.images[i] / 16.0).float()[None, None]
    expected = F.interpolate(src, size=(32, 32), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(dm.test_dataset.tensors[0][0], expected)
    assert dm.dims == (1, 32, 32) and 0.0 <= float(dm.test_dataset.tensors[0].min())
    assert float(dm.test_dataset.tensors[0].max()) <= 1.0


def test_digits_split_is_seeded() -> None:
    a, b, c = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup()
    assert all(np.array_equal(a.split_indices[k], b.split_indices[k]) for k in ("train", "val", "test"))
    assert torch.equal(a.train_dataset.tensors[0], b.train_dataset.tensors[0])
    assert not np.array_equal(a.split_indices["test"], c.split_indices["test"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"val_fraction": -0.1}, ValueError, "val_fraction"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, ValueError, "val_fraction"),
        ({"resize_to": 0}, ValueError, "resize_to"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 6.4}, TypeError, "batch_size"),
    ],
)
def test_digits_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DigitsDataModule(**kwargs)


# ----------------------------------------------------------------------------- MNIST-format files


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """IDX file: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "i" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _mnist_images(n: int, offset: int) -> np.ndarray:
    """Image k: pixel (r, c) = (offset + k + r + c) mod 256, so every image and pixel is known."""
    k, r, c = np.meshgrid(np.arange(n), np.arange(28), np.arange(28), indexing="ij")
    return ((offset + k + r + c) % 256).astype(np.uint8)


def _write_mnist(root: Path, folder: str, compress: bool) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": _mnist_images(20, 0),
        "train-labels-idx1-ubyte": (np.arange(20) * 3 % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": _mnist_images(6, 100),
        "t10k-labels-idx1-ubyte": np.array([9, 8, 7, 6, 5, 4], dtype=np.uint8),
    }
    for name, array in arrays.items():
        _write_idx(raw / name, array, compress)
    return arrays


@pytest.mark.parametrize(("cls", "folder", "compress"), [(MNISTDataModule, "MNIST", True),
                                                          (FashionMNISTDataModule, "FashionMNIST", False)])
def test_mnist_formats_load_with_exact_values(tmp_path: Path, cls, folder: str, compress: bool) -> None:
    arrays = _write_mnist(tmp_path, folder, compress)
    dm = cls(root=str(tmp_path), val_fraction=0.25, batch_size=4, normalize=False)
    dm.prepare_data()
    if compress:  # the .gz archives were unpacked next to themselves, as torchvision expects
        assert (tmp_path / folder / "raw" / "train-images-idx3-ubyte").is_file()
    dm.setup("fit")
    dm.setup("test")
    assert dm.dims == (1, 28, 28) and dm.num_classes == 10
    assert len(dm.split_indices["val"]) == 5 and len(dm.split_indices["train"]) == 15
    assert sorted(dm.split_indices["val"] + dm.split_indices["train"]) == list(range(20))

    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    for split, dataset in (("train", dm.train_dataset), ("val", dm.val_dataset)):
        for i, k in enumerate(dm.split_indices[split]):
            x, y = dataset[i]
            assert x.shape == (1, 28, 28) and x.dtype == torch.float32
            torch.testing.assert_close(x[0], torch.from_numpy(images[k]).float() / 255)
            assert y == int(labels[k])
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 1, 28, 28) and y.dtype == torch.int64
    assert y.tolist() == [9, 8, 7, 6]
    torch.testing.assert_close(x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:4]).float() / 255)


def test_mnist_normalization_constants(tmp_path: Path) -> None:
    arrays = _write_mnist(tmp_path, "MNIST", compress=False)
    dm = MNISTDataModule(root=tmp_path, val_fraction=0.0)
    dm.setup("fit")
    assert dm.mean == (0.1307,) and dm.std == (0.3081,)
    x, _ = dm.train_dataset[3]
    expected = (torch.from_numpy(arrays["train-images-idx3-ubyte"][3]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[0], expected)
    assert FashionMNISTDataModule.mean == (0.2860,) and FashionMNISTDataModule.std == (0.3530,)


def test_mnist_split_is_seeded(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST", compress=False)
    splits = []
    for seed in (0, 0, 1):
        dm = MNISTDataModule(root=tmp_path, val_fraction=0.5, seed=seed)
        dm.setup("fit")
        splits.append(dm.split_indices["val"])
    assert splits[0] == splits[1] and splits[0] != splits[2]


# ----------------------------------------------------------------------------- CIFAR-10 files


def _cifar_batch(n: int, offset: int) -> tuple[np.ndarray, list[int]]:
    """Rows of 3072 bytes (1024 R, 1024 G, 1024 B, row-major 32x32); image k, channel c is constant
    (offset + 10k + c) except pixel (0, 0) of R, which is 255 to check the spatial layout."""
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for k in range(n):
        for c in range(3):
            data[k, c] = offset + 10 * k + c
        data[k, 0, 0, 0] = 255
    return data.reshape(n, 3072), [(offset + k) % 10 for k in range(n)]


def _write_cifar(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(2, 20 * i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(3, 150)
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072}, f)
    return batches


def test_cifar10_files_load_with_exact_values(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path)
    all_data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(10, 3, 32, 32)
    all_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])

    dm = CIFAR10DataModule(root=tmp_path, val_fraction=0.3, normalize=False, augment=False,
                           verify_checksums=False, batch_size=3)
    dm.prepare_data()
    dm.setup(None)
    assert dm.dims == (3, 32, 32)
    assert len(dm.train_dataset) == 7 and len(dm.val_dataset) == 3 and len(dm.test_dataset) == 3
    for split, dataset in (("train", dm.train_dataset), ("val", dm.val_dataset)):
        for i, k in enumerate(dm.split_indices[split]):
            x, y = dataset[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            torch.testing.assert_close(x, torch.from_numpy(all_data[k]).float() / 255)
            assert y == all_labels[k]
            assert x[0, 0, 0] == 1.0
            assert torch.isclose(x[0, 0, 1], torch.tensor((20 + 20 * (k // 2) + 10 * (k % 2)) / 255))
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 2]
    torch.testing.assert_close(x[1, 2, 5, 5], torch.tensor((150 + 10 + 2) / 255))


def test_cifar10_normalization_and_augmentation(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path)
    dm = CIFAR10DataModule(root=tmp_path, val_fraction=0.5, verify_checksums=False)  # normalize, augment
    dm.setup("fit")
    mean, std = torch.tensor(dm.mean)[:, None, None], torch.tensor(dm.std)[:, None, None]
    assert dm.mean == (0.4914, 0.4822, 0.4465) and dm.std == (0.2470, 0.2435, 0.2616)
    # Validation images are never augmented.
    k = dm.split_indices["val"][0]
    raw = torch.from_numpy(batches[f"data_batch_{k // 2 + 1}"][0][k % 2].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(dm.val_dataset[0][0], (raw - mean) / std)
    # Training images are crops/flips of the padded image: same shape, values from the image or zero padding.
    torch.manual_seed(0)
    k = dm.split_indices["train"][0]
    raw = torch.from_numpy(batches[f"data_batch_{k // 2 + 1}"][0][k % 2].reshape(3, 32, 32)).float() / 255
    x = dm.train_dataset[0][0] * std + mean
    assert x.shape == (3, 32, 32)
    for c in range(3):
        allowed = torch.cat([raw[c].unique(), torch.zeros(1)])
        assert torch.isclose(x[c].reshape(-1, 1), allowed.reshape(1, -1), atol=1e-5).any(dim=1).all()


def test_cifar10_checksums_are_verified_by_default(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    dm = CIFAR10DataModule(root=tmp_path)
    dm.prepare_data()  # the files are there
    with pytest.raises(RuntimeError, match="verify_checksums=False"):
        dm.setup("fit")


# ----------------------------------------------------------------------------- missing files


@pytest.mark.parametrize(
    ("cls", "folder", "first_file"),
    [
        (MNISTDataModule, os.path.join("MNIST", "raw"), "train-images-idx3-ubyte"),
        (FashionMNISTDataModule, os.path.join("FashionMNIST", "raw"), "train-images-idx3-ubyte"),
        (CIFAR10DataModule, "cifar-10-batches-py", "data_batch_1"),
    ],
)
def test_missing_data_without_download_gives_one_clear_error(tmp_path: Path, cls, folder: str,
                                                             first_file: str) -> None:
    dm = cls(root=tmp_path, download=False)
    for call in (dm.prepare_data, lambda: dm.setup("fit"), lambda: dm.setup("test")):
        with pytest.raises(FileNotFoundError) as info:
            call()
        message = str(info.value)
        assert str(tmp_path / folder) in message and first_file in message
        assert "download=True" in message and "place the official files there" in message


def test_partly_missing_files_are_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(FileNotFoundError, match="missing test_batch in"):
        CIFAR10DataModule(root=tmp_path).prepare_data()


@pytest.mark.parametrize(("cls", "module"), [(MNISTDataModule, "torchvision.datasets.mnist"),
                                             (CIFAR10DataModule, "torchvision.datasets.cifar")])
def test_download_without_network_gives_clear_error(tmp_path: Path, monkeypatch, cls, module: str) -> None:
    def unreachable(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(f"{module}.download_and_extract_archive", unreachable)
    with pytest.raises(RuntimeError, match="failed") as info:
        cls(root=tmp_path, download=True).prepare_data()
    message = str(info.value)
    assert "internet" in message and "name resolution" in message and str(tmp_path) in message
