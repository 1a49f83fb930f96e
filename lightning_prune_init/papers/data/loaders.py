"""Train/val/test DataLoaders over a data module's three splits: the one loader recipe of every data module here.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> class Tiny(LoadersMixin):
...     batch_size, num_workers = 2, 0
...     train_dataset = val_dataset = test_dataset = TensorDataset(torch.arange(5.0))
>>> [len(b[0]) for b in Tiny().test_dataloader()]
[2, 2, 1]
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from lightning_prune_init._validation import check_number

__all__ = ["LoadersMixin", "check_fraction"]


class LoadersMixin:
    """Train/val/test loaders over ``train_dataset``/``val_dataset``/``test_dataset`` (set by ``setup``).

    Batches of ``batch_size``; the training split is shuffled (torch's global RNG, which Lightning seeds),
    the others are not; ``num_workers`` worker processes, kept alive between epochs when > 0. A split that
    is not set up raises ``RuntimeError`` naming it.
    """

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
        """Batches of the validation split, in order."""
        return self._loader(self.val_dataset, False, "val")

    def test_dataloader(self) -> DataLoader:
        """Batches of the test split, in order."""
        return self._loader(self.test_dataset, False, "test")



def check_fraction(argument: str, value: float) -> float:
    """``value`` as a float in ``[0, 1)`` (a share of the samples held out), else ``TypeError``/``ValueError``.

    >>> check_fraction("val_fraction", 0.1)
    0.1
    """
    return float(check_number(argument, value, minimum=0.0, maximum=1.0, maximum_inclusive=False))  # type: ignore[arg-type]
