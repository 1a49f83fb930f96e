"""Run a model "quietly": in eval mode, with every random stream restored afterwards.

Scoring, the monitor and the batch fetcher all evaluate the user's model in the middle of a training run.
:func:`quiet_run` makes that invisible to the run: every module's ``training`` flag is restored, and so are
torch's CPU RNG, the RNG of the given CUDA devices, Python's ``random``, NumPy's global RNG and any
``torch.Generator`` found on the given objects (dataloaders, samplers). Batch-norm running statistics are not
updated in eval mode and dropout is off.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
>>> state = torch.get_rng_state()
>>> with quiet_run(net):
...     _ = torch.rand(3), net(torch.ones(1, 2))
>>> net.training, torch.equal(state, torch.get_rng_state())
(True, True)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["preserve_random_state", "quiet_run"]


def _generators(obj: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects an object (a dataloader, a sampler) draws from."""
    found: list[torch.Generator] = []
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Generator):
            found.append(item)
            continue
        for attr in ("generator", "sampler", "batch_sampler"):
            child = getattr(item, attr, None)
            if child is not None and not isinstance(child, (int, float, str)):
                stack.append(child)
    return found


@contextlib.contextmanager
def preserve_random_state(devices: Iterable[torch.device] = (), objects: Iterable[Any] = ()) -> Iterator[None]:
    """Restore every random state the block may consume.

    Args:
        devices: devices whose RNG to fork besides the CPU's (CUDA devices; others are ignored).
        objects: dataloaders, samplers or generators whose ``torch.Generator`` states to restore.
    """
    py_state = random.getstate()
    try:
        import numpy as np

        np_state: Any = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        np, np_state = None, None
    gen_states = [(g, g.get_state()) for obj in objects for g in _generators(obj)]
    cuda = sorted({d.index or 0 for d in devices if torch.device(d).type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        if np is not None:
            np.random.set_state(np_state)
        for g, state in gen_states:
            g.set_state(state)


@contextlib.contextmanager
def quiet_run(model: nn.Module, devices: Iterable[torch.device] = (), objects: Iterable[Any] = ()) -> Iterator[None]:
    """Eval mode and :func:`preserve_random_state` for the block; each module's ``training`` flag is restored.

    Args:
        model: the module to put in eval mode.
        devices: devices whose RNG to fork (default: those of ``model``'s parameters).
        objects: further objects whose generators to restore (dataloaders, samplers).
    """
    devices = list(devices) or list({p.device for p in model.parameters()})
    modes = [(m, m.training) for m in model.modules()]
    try:
        with preserve_random_state(devices, objects):
            model.eval()
            yield
    finally:
        for m, training in modes:
            m.training = training
