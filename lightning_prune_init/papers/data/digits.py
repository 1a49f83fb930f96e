"""scikit-learn's bundled handwritten digits as a LightningDataModule: offline data, no download.

>>> dm = DigitsDataModule(resize_to=None)
>>> dm.setup()
>>> x, y = dm.train_dataset.tensors
>>> tuple(x.shape), tuple(y.shape)
((1258, 1, 8, 8), (1258,))
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lightning_prune_init._validation import check_bool, check_int
from lightning_prune_init.papers.data.loaders import LoadersMixin, check_fraction

__all__ = ["DigitsDataModule"]


class DigitsDataModule(LoadersMixin, L.LightningDataModule):
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

    >>> dm = DigitsDataModule(batch_size=100)
    >>> dm.setup()
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), y.dtype, dm.dims
    ((100, 1, 28, 28), torch.int64, (1, 28, 28))
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
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.resize_to = check_int("resize_to", resize_to, minimum=1, allow_none=True)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"`val_fraction` + `test_fraction` must leave at least 10% for training, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        self.seed = check_int("seed", seed, minimum=0)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.normalize = check_bool("normalize", normalize)
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


