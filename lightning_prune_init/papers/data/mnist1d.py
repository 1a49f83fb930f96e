"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package's ``make_dataset``, as a data module.

The benchmark's ten 1-D digit templates are padded, sheared, scaled, translated, blurred with correlated
noise and subsampled to 40 values; the data set is then centred and scaled to unit variance as a whole.
With the benchmark's arguments (5,000 samples, seed 42, 80% for training) that gives 4,000 training and
1,000 test sequences of 40 float values, 10 classes: the shapes of the published data set. Nothing is
downloaded: ``mnist1d.get_dataset`` (which fetches a pickle from GitHub) is never called.

``make_dataset`` reseeds Python's ``random`` and NumPy's global RNG; both are restored afterwards, so
generating the data does not change any other random stream of the run.

>>> data = load_mnist1d()
>>> {k: v.shape for k, v in data.items()}
{'x': (4000, 40), 'y': (4000,), 'x_test': (1000, 40), 'y_test': (1000,)}
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_prune_init._quiet import preserve_random_state
from lightning_prune_init._validation import check_int
from lightning_prune_init.papers.data.loaders import LoadersMixin, check_fraction

__all__ = ["MNIST1DDataModule", "load_mnist1d"]

_KEYS = ("x", "y", "x_test", "y_test")
_MEMORY: dict[str, dict[str, np.ndarray]] = {}


def _generator_args(num_samples: int, seed: int) -> dict[str, Any]:
    try:
        from mnist1d.data import get_dataset_args
    except ImportError as err:  # pragma: no cover - the package is a test dependency
        raise ImportError(
            "MNIST-1D needs the `mnist1d` package (it generates the data offline): pip install mnist1d"
        ) from err
    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=seed)
    args.pop("url", None)  # the download address plays no part in generating the data
    return args


def _cache_key(args: dict[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"mnist1d_n{args['num_samples']}_seed{args['seed']}_{digest}"


def _valid(data: dict[str, np.ndarray], args: dict[str, Any]) -> bool:
    n_train = int(args["num_samples"] * args["train_split"])
    n_test = args["num_samples"] - n_train
    length = args["final_seq_length"]
    return (
        set(data) == set(_KEYS)
        and data["x"].shape == (n_train, length)
        and data["x_test"].shape == (n_test, length)
        and data["y"].shape == (n_train,)
        and data["y_test"].shape == (n_test,)
    )


def _check_num_samples(num_samples: Any) -> int:
    check_int("num_samples", num_samples, minimum=10)
    if num_samples % 10:
        raise ValueError(f"`num_samples` must be a multiple of 10 (10 classes of equal size), got {num_samples}")
    return int(num_samples)


def _read(path: str, args: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path``, or ``None`` when the file is missing, unreadable or of other shapes."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            data = {k: stored[k] for k in stored.files}
    except (OSError, ValueError):  # a truncated or foreign file: regenerate it
        return None
    return data if _valid(data, args) else None


def _generate(args: dict[str, Any]) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    with preserve_random_state():  # make_dataset calls random.seed and np.random.seed
        raw = make_dataset(ObjectView(dict(args)))
    return {
        "x": raw["x"].astype(np.float32),
        "y": raw["y"].astype(np.int64),
        "x_test": raw["x_test"].astype(np.float32),
        "y_test": raw["y_test"].astype(np.int64),
    }


def load_mnist1d(num_samples: int = 5000, seed: int = 42, cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays: ``x [0.8 N, 40]`` float32, ``y [0.8 N]`` int64, ``x_test [0.2 N, 40]``, ``y_test [0.2 N]``.

    Generated with the benchmark's arguments (``mnist1d.data.get_dataset_args``) but ``num_samples`` and
    ``seed``; the same arguments give the same arrays. Looked up first in this process's memory, then in
    ``cache_dir`` (a file ``mnist1d_n<N>_seed<seed>_<hash of the arguments>.npz``, written atomically, read
    without pickle and checked for its shapes), and generated only when neither holds it (about 2 s for
    5,000 samples). Returned arrays are copies: changing them does not change the cache.

    Args:
        num_samples: samples in all, a multiple of 10 (``make_dataset`` draws ``num_samples // 10`` per
            class), >= 10. Default 5000 (4,000 train / 1,000 test).
        seed: seed of the generator. Default 42, the benchmark's.
        cache_dir: folder for the on-disk cache, created if missing; ``None`` (default) keeps the arrays in
            memory only.

    Raises:
        ImportError: the ``mnist1d`` package is not installed.
        TypeError, ValueError: a bad ``num_samples`` or ``seed``.

    >>> small = load_mnist1d(num_samples=100, seed=0)
    >>> small["x"].shape, small["x"].dtype, sorted(set(small["y"].tolist()))[:3]
    ((80, 40), dtype('float32'), [0, 1, 2])
    """
    _check_num_samples(num_samples)
    check_int("seed", seed, minimum=0)
    args = _generator_args(num_samples, seed)
    key = _cache_key(args)
    path = None if cache_dir is None else os.path.join(os.fspath(cache_dir), key + ".npz")
    stored = None if path is None else _read(path, args)
    data = _MEMORY.get(key) or stored or _generate(args)
    _MEMORY[key] = data
    if path is not None and stored is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.part.npz"  # unique per process: ranks may write at once
        np.savez(partial, **data)
        os.replace(partial, path)
    return {k: v.copy() for k, v in data.items()}


class MNIST1DDataModule(LoadersMixin, L.LightningDataModule):
    """MNIST-1D (Greydanus 2020) generated offline: sequences ``[N, 1, 40]`` float32, targets ``[N]`` int64.

    The benchmark's split is kept: its 1,000 test sequences are the test split; of its 4,000 training
    sequences ``round(val_fraction * 4000)`` (chosen with ``seed``) are held out for validation, the rest
    train (3,600 / 400 with the defaults; ``val_fraction=0`` trains on all 4,000 and leaves the validation
    split empty). The data are already centred and scaled by the generator; no further normalisation.
    ``dims = (1, 40)``: the papers' MLPs take it with ``input_shape=(1, 40)``, the 1-D CNN
    (:class:`~lightning_prune_init.papers.networks.conv1d.ConvNet1D`) as it is. Indices of each split
    into the benchmark's training/test arrays are kept in ``split_indices``.

    Args:
        batch_size: samples per batch. Default 100 (the benchmark's).
        val_fraction: fraction of the 4,000 training sequences held out, in [0, 1). Default 0.1.
        seed: seed of the generator and of the validation split. Default 42 (the published data).
        num_samples: samples generated in all, a multiple of 10. Default 5000 (4,000 + 1,000).
        cache_dir: folder where the generated arrays are cached (see :func:`load_mnist1d`); ``None``
            (default): in memory only.
        num_workers: DataLoader workers. Default 0.

    >>> dm = MNIST1DDataModule(val_fraction=0.0)
    >>> dm.setup()
    >>> len(dm.train_dataset), len(dm.test_dataset), dm.dims, dm.num_classes
    (4000, 1000, (1, 40), 10)
    """

    num_classes: int = 10

    def __init__(
        self,
        batch_size: int = 100,
        val_fraction: float = 0.1,
        seed: int = 42,
        num_samples: int = 5000,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.seed = check_int("seed", seed, minimum=0)
        self.num_samples = _check_num_samples(num_samples)
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"`cache_dir` must be a folder path or None, got {type(cache_dir).__name__} {cache_dir!r}")
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.save_hyperparameters()
        self.dims: tuple[int, int] = (1, 40)
        self.split_indices: dict[str, np.ndarray] = {}
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    def _arrays(self) -> dict[str, np.ndarray]:
        return load_mnist1d(self.num_samples, self.seed, self.cache_dir)

    def prepare_data(self) -> None:
        """Generate the data once per node and write the disk cache (when ``cache_dir`` is set)."""
        if self.cache_dir is not None:
            self._arrays()

    def setup(self, stage: str | None = None) -> None:
        """Generate (or read from the cache) and split; all splits at once, only on the first call."""
        if self.train_dataset is not None:
            return
        data = self._arrays()
        n = len(data["y"])
        n_val = round(self.val_fraction * n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).numpy()
        self.split_indices = {
            "train": np.sort(order[n_val:]),
            "val": np.sort(order[:n_val]),
            "test": np.arange(len(data["y_test"])),
        }
        self.dims = (1, int(data["x"].shape[1]))

        def subset(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.from_numpy(x[idx]).unsqueeze(1).contiguous(), torch.from_numpy(y[idx]))

        self.train_dataset = subset(data["x"], data["y"], self.split_indices["train"])
        self.val_dataset = subset(data["x"], data["y"], self.split_indices["val"])
        self.test_dataset = subset(data["x_test"], data["y_test"], self.split_indices["test"])
