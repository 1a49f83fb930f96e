"""Shared helpers of the reproduction experiments: data as tensors, a plain training loop, pruning
pipelines built on the package's public API, and writers for CSV / markdown / PNG.

Every experiment script is one command, e.g. ``.venv/bin/python -m experiments.init_study --quick``,
and writes ``<out>/<name>.csv``, ``<out>/<name>.md`` and PNG figures (default ``docs/results/``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_prune_init import (  # noqa: E402
    apply_masks,
    approximate_isometry,
    connection_sensitivity,
    init_model_,
    jacobian_singular_values,
    select_masks,
)
from lightning_prune_init.scoring import criterion_masks, noise_batches  # noqa: E402
from lightning_prune_init.papers import build_network  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results")
INITS = {"VS-L": "vs-lecun", "VS-G": "vs-glorot", "VS-H": "vs-he", "orthogonal": "orthogonal"}


def setup_torch() -> None:
    """One intra-op thread: the experiments run many tiny ops on shared cores."""
    torch.set_num_threads(1)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small grid that finishes in a few minutes on 2 CPU cores")
    p.add_argument("--out", default=None, help="output folder (default: see default_out)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--data", default="digits", choices=["digits", "mnist1d", "mnist", "fashion-mnist"])
    p.add_argument("--root", default="data", help="folder with MNIST/ or FashionMNIST/ (torchvision layout)")
    p.add_argument("--from-csv", action="store_true",
                   help="rebuild the tables and figures from the CSVs already in --out, without running anything")
    return p


def study_main(doc: str, run: Callable[[argparse.Namespace], dict], argv: Sequence[str] | None, *,
               report: Callable[..., dict] | None = None, csvs: Sequence[str] = (),
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> dict:
    """Parse a study's command line (:func:`base_parser` plus its ``extra`` arguments) and run it; with
    ``--from-csv``, ``report`` the rows of the ``csvs`` already in ``--out`` instead."""
    parser = base_parser(doc.splitlines()[0])
    if extra is not None:
        extra(parser)
    args = parse_args(parser, argv)
    if args.from_csv:
        if report is None:
            raise SystemExit(f"{parser.prog}: --from-csv is not supported by this study; run it again")
        return report_from_csv(args, csvs, report)
    return run(args)


def start(args: argparse.Namespace) -> tuple[Timer, Data]:
    """One intra-op thread, a started :class:`Timer` and the data set ``args`` names."""
    setup_torch()
    return Timer(), load_data(args.data, args.root)


def default_out(args: argparse.Namespace) -> str:
    """``docs/results`` for the quick digits runs, ``docs/results/<data>`` for other quick runs and
    ``docs/results/full/<data>`` for full-setting runs."""
    if args.quick:
        return DEFAULT_OUT if args.data == "digits" else os.path.join(DEFAULT_OUT, args.data)
    return os.path.join(DEFAULT_OUT, "full", args.data)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and fill in the default output folder."""
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = default_out(args)
    return args


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(1, 28, 28)`` for the digits, ``(1, 40)`` for MNIST-1D."""
        return tuple(self.x_train.shape[1:])


def _stack(loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


_CACHE: dict[tuple[str, str], Data] = {}


def load_data(name: str = "digits", root: str = "data") -> Data:
    """All of a data set's train and test split as tensors ``[N, 1, 28, 28]``, loaded once per process.

    ``digits``: the bundled scikit-learn digits resized to 28x28 (1,258 train / 359 test; the 180
    validation images are not used). ``mnist1d``: MNIST-1D generated offline, the benchmark's 4,000 train /
    1,000 test sequences ``[N, 1, 40]``. ``mnist`` / ``fashion-mnist``: torchvision files under ``root``
    (never downloaded); the 10% validation split is held out as in SPP.
    """
    key = (name, root)
    if key in _CACHE:
        return _CACHE[key]
    if name == "digits":
        from lightning_prune_init.papers import DigitsDataModule

        dm = DigitsDataModule(batch_size=1000, resize_to=28)
    elif name == "mnist1d":
        from lightning_prune_init.papers import MNIST1DDataModule

        dm = MNIST1DDataModule(batch_size=1000, val_fraction=0.0)
    elif name == "mnist":
        from lightning_prune_init.papers import MNISTDataModule

        dm = MNISTDataModule(root=root, batch_size=1000)
    elif name == "fashion-mnist":
        from lightning_prune_init.papers import FashionMNISTDataModule

        dm = FashionMNISTDataModule(root=root, batch_size=1000)
    else:
        raise ValueError(f"unknown data set {name!r}")
    dm.setup("fit")
    dm.setup("test")
    # The datasets in their stored order: the train dataloader shuffles with the global RNG, which made
    # the tensor order (and so every run) differ from process to process.
    from torch.utils.data import DataLoader

    x_train, y_train = _stack(DataLoader(dm.train_dataset, batch_size=1000, shuffle=False))
    x_test, y_test = _stack(DataLoader(dm.test_dataset, batch_size=1000, shuffle=False))
    data = Data(name, x_train, y_train, x_test, y_test)
    _CACHE[key] = data
    return data


def batches_of(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    """Shuffled mini-batches, the permutation drawn from ``generator``."""
    perm = torch.randperm(len(x), generator=generator)
    return [(x[perm[i : i + batch_size]], y[perm[i : i + batch_size]]) for i in range(0, len(x), batch_size)]


# -------------------------------------------------------------------------------------------- pruning
def make_model(arch: str, init: str, seed: int, depth: int = 7, activation: str = "tanh", width: int = 100,
               input_shape: Sequence[int] = (1, 28, 28)) -> nn.Module:
    """``arch`` is ``"mlp"`` (MLP-``depth``), ``"lenet300"`` or ``"conv1d"``; ``init`` a key of :data:`INITS`.

    ``input_shape``: the shape of one input (``Data.input_shape``); the fully connected nets take
    ``prod(input_shape)`` inputs, the 1-D CNN ``input_shape = (channels, length)``.
    """
    torch.manual_seed(seed)
    if arch == "mlp":
        model = build_network("mlp", depth=depth, width=width, activation=activation, input_shape=tuple(input_shape))
    elif arch == "conv1d":
        model = build_network("conv1d", in_channels=input_shape[0], input_length=input_shape[-1])
    else:
        model = build_network(arch, input_shape=tuple(input_shape))
    init_model_(model, INITS.get(init, init), gain=1.0, zero_biases=True, generator=torch.Generator().manual_seed(seed))
    return model


def scoring_batches(data: Data, supervision: str, seed: int, num_batches: int = 1, batch_size: int = 100) -> tuple[list[Any], str]:
    """Batches and ``labels`` argument for :func:`connection_sensitivity`.

    ``labels``: true labels; ``label_free``: real inputs, uniform target; ``data_free``: Gaussian noise
    inputs shaped like the real ones (:func:`noise_batches`), uniform target.
    """
    g = torch.Generator().manual_seed(10_000 + seed)
    real = batches_of(data.x_train, data.y_train, batch_size, g)[:num_batches]
    if supervision == "labels":
        return real, "true"
    if supervision == "label_free":
        return [(x, y) for x, y in real], "uniform"
    if supervision == "data_free":
        noise = noise_batches(real[0][0], num_batches, seed=seed)
        return [(x, torch.zeros(len(x), dtype=torch.long)) for x in noise], "uniform"
    raise ValueError(supervision)


def snip_masks(model: nn.Module, data: Data, sparsity: float, seed: int, supervision: str = "labels", num_batches: int = 1) -> dict[str, Tensor]:
    batches, labels = scoring_batches(data, supervision, seed, num_batches)
    scores = connection_sensitivity(model, batches, labels=labels)
    return select_masks(scores, sparsity, scope="global", on_layer_collapse="ignore")


def random_masks(model: nn.Module, sparsity: float, seed: int) -> dict[str, Tensor]:
    _, masks = criterion_masks(model, None, criterion="random", sparsity=sparsity, generator=torch.Generator().manual_seed(seed),
                               on_layer_collapse="ignore")
    return masks


def repair(model: nn.Module, steps: int, solver: str = "sgd") -> Any:
    """The data-free approximate-isometry repair on the attached masks (SPP §4; lr 0.1, target I)."""
    return approximate_isometry(model, solver=solver, steps=steps, progress=False)


def densities(masks: Mapping[str, Tensor]) -> dict[str, float]:
    return {name: float(m.float().mean()) for name, m in masks.items()}


def jsv(model: nn.Module, probe: Tensor, scope: str) -> dict[str, Any]:
    was = model.training
    model.eval()
    out = jacobian_singular_values(model, probe if scope != "weights" else None, scope=scope, method="exact")
    model.train(was)
    return out


# ------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    losses: list[float]  # training loss, mean over each logging window
    errors: list[float]  # test error (%) at each evaluation
    eval_steps: list[int]
    final_error: float
    final_train_loss: float


@torch.no_grad()
def test_error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    model.train(was)
    return 100.0 * float((pred != y).float().mean())


def train(
    model: nn.Module,
    data: Data,
    *,
    steps: int,
    seed: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 100,
    eval_every: int = 50,
    masks: Mapping[str, Tensor] | None = None,
) -> TrainResult:
    """Plain SGD loop (lr 0.1, batch 100, weight decay 5e-4; momentum 0.9 as SNIP, 0 as SPP).

    ``masks`` are attached with :func:`apply_masks` together with the optimizer, so the pruned entries
    stay exactly zero throughout; ``None`` trains densely (or keeps masks already attached).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if masks is not None:
        apply_masks(model, masks, optimizers=[opt])
    g = torch.Generator().manual_seed(20_000 + seed)
    model.train()
    losses, errors, eval_steps, window = [], [], [], []
    step = 0
    while step < steps:
        for x, y in batches_of(data.x_train, data.y_train, batch_size, g):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            window.append(loss.item())
            if step % eval_every == 0 or step == steps:
                losses.append(sum(window) / len(window) if all(map(math.isfinite, window)) else float("nan"))
                window = []
                errors.append(test_error(model, data.x_test, data.y_test))
                eval_steps.append(step)
            if step >= steps:
                break
    return TrainResult(losses, errors, eval_steps, errors[-1], losses[-1])


# -------------------------------------------------------------------------------------------- writing
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def fmt(values: Sequence[float], digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def read_csv(path: str) -> list[dict[str, Any]]:
    """The rows :func:`write_csv` wrote, typed back: ints stay ints, floats floats (``repr`` round-trips
    exactly), everything else a string."""
    def typed(v: str) -> Any:
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: typed(v) for k, v in r.items()} for r in csv.DictReader(f)]


def save_and_report(args: argparse.Namespace, study: str, csvs: Mapping[str, list[dict[str, Any]]],
                    report: Callable[..., dict], timer: Timer) -> dict:
    """Write each ``{file name: rows}`` CSV into ``args.out``, then ``report(args, *rows)``; prints the time."""
    for name, rows in csvs.items():
        write_csv(os.path.join(args.out, name), rows)
    out = report(args, *csvs.values())
    print(f"{study}: wrote {args.out} in {timer}")
    return out


def report_from_csv(args: argparse.Namespace, names: Sequence[str], report: Callable[..., dict]) -> dict:
    """``report(args, *rows)`` with the rows read back from the CSVs ``names`` in ``args.out`` (``--from-csv``)."""
    return report(args, *(read_csv(os.path.join(args.out, n)) for n in names))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_md(path: str, title: str, command: str, sections: Sequence[tuple[str, str]]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {title}\n\nProduced by `{command}`.\n\n")
        for heading, body in sections:
            f.write(f"## {heading}\n\n{body}\n")


def savefig(fig: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command_line(module: str, args: argparse.Namespace) -> str:
    cmd = f".venv/bin/python -m experiments.{module}"
    if args.quick:
        cmd += " --quick"
    if args.data == "mnist1d":
        cmd += " --data mnist1d"
    elif args.data != "digits":
        cmd += f" --data {args.data} --root {args.root}"
    if args.seeds != 3:
        cmd += f" --seeds {args.seeds}"
    for flag in ("momentum",):
        if getattr(args, flag, None):
            cmd += f" --{flag} {getattr(args, flag)}"
    return cmd


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.t0:.1f} s"
