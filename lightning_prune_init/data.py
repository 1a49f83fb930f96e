"""Data modules: scikit-learn's bundled digits (offline, the default) and torchvision data sets.

Every module yields batches ``(images [B, C, H, W] float32, targets [B] int64)`` and exposes
``num_classes`` (10) and ``dims`` (``(C, H, W)`` of one image). After ``setup`` the splits are
``train_dataset``, ``val_dataset`` and ``test_dataset``.

- :class:`DigitsDataModule`: the 1,797 8x8 digits bundled with scikit-learn; needs no download.
- :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`, :class:`CIFAR10DataModule`: torchvision's
  readers on files under ``root``. With ``download=False`` (default) missing files raise one
  ``FileNotFoundError`` naming the folder and the files expected there.

Normalisation constants (``mean``/``std`` class attributes) are the pixel statistics of each
official training set after scaling to [0, 1]:

- MNIST: mean 0.1307, std 0.3081;
- Fashion-MNIST: mean 0.2860, std 0.3530;
- CIFAR-10 (per channel R, G, B): mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616),
  the standard deviation over all training pixels of each channel (the often copied
  (0.2023, 0.1994, 0.2010) is the mean of per-image standard deviations).
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "DigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
]


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value}")
    return float(value)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


class _LoadersMixin:
    """Train/val/test loaders over ``train_dataset``/``val_dataset``/``test_dataset``."""

    batch_size: int
    num_workers: int
    train_dataset: Dataset | None
    val_dataset: Dataset | None
    test_dataset: Dataset | None

    def _loader(self, dataset: Dataset | None, shuffle: bool, split: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"the {split} split is not set up: call `setup()` first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the training split (order from torch's global RNG)."""
        return self._loader(self.train_dataset, True, "train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, False, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, False, "test")


class DigitsDataModule(_LoadersMixin, L.LightningDataModule):
    """scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes): offline data.

    Pipeline: pixel values 0..16 are divided by 16 (range [0, 1]); optionally resized to
    ``resize_to`` x ``resize_to`` with bilinear interpolation (``align_corners=False``, so the
    range stays [0, 1]); split into train/val/test stratified by class with ``seed``; optionally
    normalised by the **training split's** pixel mean and standard deviation (one scalar each,
    stored as ``mean``/``std``). Tensors are ``[N, 1, H, W]`` float32, targets ``[N]`` int64.

    Split sizes: ``round(test_fraction * 1797)`` test, ``round(val_fraction * 1797)`` validation,
    the rest training; with the defaults 1,258 / 180 / 359. The original indices (into
    ``sklearn.datasets.load_digits()``) of each split are kept in ``split_indices``.

    Args:
        batch_size: samples per batch. Default 64.
        resize_to: output side in pixels, or ``None`` to keep 8x8. Default 28 (MNIST-sized, so the
            MNIST networks of the papers apply unchanged).
        val_fraction: fraction of all samples used for validation, in [0, 1). Default 0.1.
        test_fraction: fraction of all samples used for test, in [0, 1). Default 0.2.
        seed: seed of the split. Default 0.
        num_workers: DataLoader workers. Default 0.
        normalize: subtract the training mean and divide by the training std. Default True.
    """

    num_classes: int = 10

    def __init__(
        self,
        batch_size: int = 64,
        resize_to: int | None = 28,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        if resize_to is not None:
            _check_int(resize_to, "resize_to", 1)
        self.resize_to = resize_to
        self.val_fraction = _check_fraction(val_fraction, "val_fraction")
        self.test_fraction = _check_fraction(test_fraction, "test_fraction")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"`val_fraction` + `test_fraction` must leave at least 10% for training, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        self.seed = _check_int(seed, "seed", 0)
        self.num_workers = _check_int(num_workers, "num_workers", 0)
        self.normalize = bool(normalize)
        self.save_hyperparameters()
        side = 8 if resize_to is None else resize_to
        self.dims: tuple[int, int, int] = (1, side, side)
        self.mean: float | None = None
        self.std: float | None = None
        self.split_indices: dict[str, np.ndarray] = {}
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load, scale, resize, split and normalise; all splits at once, only on the first call."""
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8]
        targets = torch.from_numpy(digits.target.astype(np.int64))
        if self.resize_to is not None and self.resize_to != 8:
            images = F.interpolate(images, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)

        n = len(targets)
        n_test = round(self.test_fraction * n)
        n_val = round(self.val_fraction * n)
        rest = np.arange(n)
        test_idx = np.array([], dtype=np.int64)
        val_idx = np.array([], dtype=np.int64)
        if n_test > 0:
            rest, test_idx = train_test_split(
                rest, test_size=n_test, stratify=digits.target[rest], random_state=self.seed
            )
        if n_val > 0:
            rest, val_idx = train_test_split(
                rest, test_size=n_val, stratify=digits.target[rest], random_state=self.seed + 1
            )
        self.split_indices = {"train": np.sort(rest), "val": np.sort(val_idx), "test": np.sort(test_idx)}

        if self.normalize:
            train_images = images[torch.from_numpy(self.split_indices["train"])]
            self.mean = float(train_images.mean())
            self.std = float(train_images.std())
            images = (images - self.mean) / self.std

        def subset(split: str) -> TensorDataset:
            idx = torch.from_numpy(self.split_indices[split].astype(np.int64))
            return TensorDataset(images[idx].contiguous(), targets[idx].contiguous())

        self.train_dataset = subset("train")
        self.val_dataset = subset("val")
        self.test_dataset = subset("test")


class _TransformedSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image (a PIL image from torchvision)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, target = self.dataset[self.indices[i]]
        return self.transform(image), int(target)


class _TorchvisionDataModule(_LoadersMixin, L.LightningDataModule):
    """Shared logic: file checks, download with a clear failure, seeded train/val split, transforms.

    Subclasses set ``name``, ``dims``, ``mean``, ``std`` and implement ``_folder``,
    ``_required_files``, ``_make_dataset`` and ``_train_transform``.
    """

    name: str = ""
    num_classes: int = 10
    dims: tuple[int, int, int] = (1, 28, 28)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    _files_hint: str = ""

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a path, got {root!r}")
        self.root = os.fspath(root)
        self.download = bool(download)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.val_fraction = _check_fraction(val_fraction, "val_fraction")
        self.seed = _check_int(seed, "seed", 0)
        self.num_workers = _check_int(num_workers, "num_workers", 0)
        self.normalize = bool(normalize)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.split_indices: dict[str, list[int]] = {}
        self.save_hyperparameters()

    # --- to be provided by subclasses -------------------------------------------------------
    def _folder(self) -> str:
        raise NotImplementedError

    def _required_files(self) -> list[str]:
        raise NotImplementedError

    def _make_dataset(self, train: bool, download: bool) -> Dataset:
        raise NotImplementedError

    def _train_transform(self) -> Callable[[Any], torch.Tensor]:
        return self._eval_transform()

    # --- shared ------------------------------------------------------------------------------
    def _eval_transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision import transforms

        steps: list[Any] = [transforms.ToTensor()]
        if self.normalize:
            steps.append(transforms.Normalize(self.mean, self.std))
        return transforms.Compose(steps)

    def _prepare_local_files(self) -> None:
        """Hook to make torchvision's expected files from what is on disk (e.g. unpack ``.gz``)."""

    def _missing_files(self) -> list[str]:
        folder = self._folder()
        return [f for f in self._required_files() if not os.path.isfile(os.path.join(folder, f))]

    def _check_files(self) -> None:
        self._prepare_local_files()
        missing = self._missing_files()
        if missing:
            raise FileNotFoundError(
                f"{self.name} not found: missing {', '.join(missing)} in {os.path.abspath(self._folder())}. "
                f"Pass `download=True` to download it (needs internet access), or place the official "
                f"files there{self._files_hint}."
            )

    def prepare_data(self) -> None:
        """Download the files if asked (once per node); otherwise check that they are present."""
        if self.download:
            self._prepare_local_files()
            if not self._missing_files():
                return
            try:
                for train in (True, False):
                    self._make_dataset(train=train, download=True)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                raise RuntimeError(
                    f"downloading {self.name} into {os.path.abspath(self.root)} failed. Check the internet "
                    f"connection, or download the files by hand and place them in "
                    f"{os.path.abspath(self._folder())} (expected: {', '.join(self._required_files())}), then "
                    f"use `download=False`. Cause: {str(err).strip()}"
                ) from err
        self._check_files()

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val split (seeded, ``round(val_fraction * N)`` validation samples) and test set."""
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            self._check_files()
            full = self._make_dataset(train=True, download=False)
            n = len(full)  # type: ignore[arg-type]
            n_val = round(self.val_fraction * n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.split_indices["val"] = sorted(order[:n_val])
            self.split_indices["train"] = sorted(order[n_val:])
            self.train_dataset = _TransformedSubset(full, self.split_indices["train"], self._train_transform())
            self.val_dataset = _TransformedSubset(full, self.split_indices["val"], self._eval_transform())
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self._check_files()
            test = self._make_dataset(train=False, download=False)
            indices = range(len(test))  # type: ignore[arg-type]
            self.test_dataset = _TransformedSubset(test, indices, self._eval_transform())


class MNISTDataModule(_TorchvisionDataModule):
    """MNIST through ``torchvision.datasets.MNIST``: 60,000 train / 10,000 test, 1x28x28, 10 classes.

    Files: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed IDX, as
    torchvision reads them). If only the ``.gz`` archives are there they are unpacked in place,
    without network access. Images are scaled to [0, 1] and, with ``normalize`` (default), normalised
    with ``mean = (0.1307,)``, ``std = (0.3081,)``. Validation is ``round(val_fraction * 60000)``
    training images chosen with ``seed``. No augmentation.

    Args:
        root: folder holding ``MNIST/``. Default ``"data"``.
        download: download the files from torchvision's mirrors when missing. Default False.
        batch_size: Default 128. val_fraction: Default 0.1 (SPP holds out 10%). seed: Default 0.
        num_workers: DataLoader workers. Default 0. normalize: Default True.
    """

    name = "MNIST"
    dims = (1, 28, 28)
    mean = (0.1307,)
    std = (0.3081,)
    _files_hint = " (the .gz archives are accepted too)"
    _files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

    def _dataset_class(self) -> type:
        from torchvision.datasets import MNIST

        return MNIST

    def _folder(self) -> str:
        # torchvision reads <root>/<class name>/raw/
        return os.path.join(self.root, self._dataset_class().__name__, "raw")

    def _required_files(self) -> list[str]:
        return list(self._files)

    def _prepare_local_files(self) -> None:
        folder = self._folder()
        for f in self._files:
            path = os.path.join(folder, f)
            if not os.path.isfile(path) and os.path.isfile(path + ".gz"):
                partial = f"{path}.{os.getpid()}.part"  # unique per process: ranks may unpack at once
                with gzip.open(path + ".gz", "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(partial, path)

    def _make_dataset(self, train: bool, download: bool) -> Dataset:
        return self._dataset_class()(self.root, train=train, download=download)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST through ``torchvision.datasets.FashionMNIST``: same layout and sizes as MNIST.

    Files in ``<root>/FashionMNIST/raw/`` (same names as MNIST; ``.gz`` archives are unpacked).
    Normalisation: ``mean = (0.2860,)``, ``std = (0.3530,)``. Arguments as :class:`MNISTDataModule`.
    """

    name = "Fashion-MNIST"
    mean = (0.2860,)
    std = (0.3530,)

    def _dataset_class(self) -> type:
        from torchvision.datasets import FashionMNIST

        return FashionMNIST


def _cifar10_without_checksums() -> type:
    from torchvision.datasets import CIFAR10

    class CIFAR10NoChecksum(CIFAR10):
        """torchvision's CIFAR10 that checks only that the files exist (MD5 set to ``None``)."""

        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10NoChecksum


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 through ``torchvision.datasets.CIFAR10``: 50,000 train / 10,000 test, 3x32x32, 10 classes.

    Files: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (the python
    pickles of the official archive). torchvision checks their MD5 against the official files;
    ``verify_checksums=False`` only checks that they exist (e.g. for a subset you wrote yourself).
    Images are scaled to [0, 1] and, with ``normalize``, normalised per channel with
    ``mean = (0.4914, 0.4822, 0.4465)``, ``std = (0.2470, 0.2435, 0.2616)``. With ``augment``
    (default) training images are randomly cropped to 32x32 from a 4-pixel zero padding and flipped
    horizontally with probability 0.5 (the usual CIFAR protocol); validation and test images never are.

    Args:
        root: folder holding ``cifar-10-batches-py/``. Default ``"data"``.
        download: download and unpack the official archive (163 MB) when missing. Default False.
        batch_size: Default 128 (SNIP's CIFAR batch). val_fraction: Default 0.1. seed: Default 0.
        num_workers: DataLoader workers. Default 0. normalize: Default True.
        augment: random crop and flip on the training split. Default True.
        verify_checksums: compare the files' MD5 with the official ones. Default True.
    """

    name = "CIFAR-10"
    dims = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    _files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        normalize: bool = True,
        augment: bool = True,
        verify_checksums: bool = True,
    ) -> None:
        super().__init__(root, download, batch_size, val_fraction, seed, num_workers, normalize)
        self.augment = bool(augment)
        self.verify_checksums = bool(verify_checksums)

    def _folder(self) -> str:
        return os.path.join(self.root, "cifar-10-batches-py")

    def _required_files(self) -> list[str]:
        return list(self._files)

    def _make_dataset(self, train: bool, download: bool) -> Dataset:
        from torchvision.datasets import CIFAR10

        cls = CIFAR10 if self.verify_checksums or download else _cifar10_without_checksums()
        try:
            return cls(self.root, train=train, download=download)
        except RuntimeError as err:
            if download or self._missing_files():
                raise
            raise RuntimeError(
                f"{self.name} files in {os.path.abspath(self._folder())} are present but their MD5 checksums "
                "differ from the official ones. Replace them with the official files, or pass "
                "`verify_checksums=False` to load them as they are."
            ) from err

    def _train_transform(self) -> Callable[[Any], torch.Tensor]:
        if not self.augment:
            return self._eval_transform()
        from torchvision import transforms

        return transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), self._eval_transform()]
        )
