"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's readers, on files under a folder (download opt-in).

With ``download=False`` (default) missing files raise one ``FileNotFoundError`` naming the folder and the
files expected there. Normalisation constants (``mean``/``std`` class attributes) are the pixel statistics
of each official training set after scaling to [0, 1]:

- MNIST: mean 0.1307, std 0.3081;
- Fashion-MNIST: mean 0.2860, std 0.3530;
- CIFAR-10 (per channel R, G, B): mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616),
  the standard deviation over all training pixels of each channel (the often copied
  (0.2023, 0.1994, 0.2010) is the mean of per-image standard deviations).

>>> MNISTDataModule(root="data").dims, CIFAR10DataModule.dims
((1, 28, 28), (3, 32, 32))
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from lightning_prune_init._validation import check_bool, check_int
from lightning_prune_init.papers.data.loaders import LoadersMixin, check_fraction

__all__ = ["CIFAR10DataModule", "FashionMNISTDataModule", "MNISTDataModule"]


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


class _TorchvisionDataModule(LoadersMixin, L.LightningDataModule):
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
        self.download = check_bool("download", download)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.seed = check_int("seed", seed, minimum=0)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.normalize = check_bool("normalize", normalize)
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

    >>> dm = MNISTDataModule(root="no-such-folder")
    >>> dm.mean, dm.std, dm.dims
    ((0.1307,), (0.3081,), (1, 28, 28))
    >>> dm.prepare_data()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: MNIST not found: missing train-images-idx3-ubyte, ...
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

    >>> FashionMNISTDataModule(root="data").mean
    (0.286,)
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

    >>> dm = CIFAR10DataModule(root="data", augment=False)
    >>> dm.dims, dm.std
    ((3, 32, 32), (0.247, 0.2435, 0.2616))
    """

    name = "CIFAR-10"
    dims = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    _files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]

    def __init__(self, *, augment: bool = True, verify_checksums: bool = True, **kwargs: Any) -> None:
        """``augment`` and ``verify_checksums`` as documented above; every other argument as :class:`MNISTDataModule`."""
        super().__init__(**kwargs)
        self.augment = check_bool("augment", augment)
        self.verify_checksums = check_bool("verify_checksums", verify_checksums)

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
