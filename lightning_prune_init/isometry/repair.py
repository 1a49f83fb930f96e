"""The isometry repair: move the kept entries of the selected weights toward isometry, in place, without data.

``approximate_isometry`` reads each selected weight as the matrices of its layout, stacks the matrices of one
size across weights, runs a solver (:mod:`~lightning_prune_init.isometry.solvers`) on each stack and writes
each weight back in one copy. Nothing outside the selection is written.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_bool, check_choice, check_int, check_number
from lightning_prune_init.isometry.compact import Piece, join, split
from lightning_prune_init.isometry.objective import (
    TARGETS,
    masked_matrices,
    matrix_best_errors,
    resolve_masks,
    squared_errors,
    work_dtype,
)
from lightning_prune_init.isometry.report import IsometryReport, LayerIsometry
from lightning_prune_init.isometry.solvers import SOLVERS, ConjugateGradient, MatrixBatch, sgd_step
from lightning_prune_init.layouts import MatrixLayout
from lightning_prune_init.parameters import ParameterSelection, as_selection

__all__ = ["approximate_isometry"]


class _Weight:
    """One selected weight: its parameter, layout, mask and the errors before the repair."""

    def __init__(self, name: str, param: nn.Parameter, layout: MatrixLayout, mask: Tensor | None, target: str,
                 gain: float) -> None:
        self.name, self.param, self.layout, self.mask = name, param, layout, mask
        self.groups, self.rows, self.cols = layout.matrix_shape(param.shape)
        self.density = 1.0 if mask is None else float(mask.float().mean())
        self.bests = matrix_best_errors(param.shape, mask, layout, target, gain)
        self.error_before = self.error(target, gain)

    def error(self, target: str, gain: float) -> float:
        return float(torch.sqrt(squared_errors(masked_matrices(self.param, self.mask, self.layout), target, gain).sum()))

    @property
    def key(self) -> tuple[Any, ...]:
        """Weights with the same key are solved in one batch: same matrix size (up to transposing), device, dtype."""
        p = self.param
        return min(self.rows, self.cols), max(self.rows, self.cols), p.device, work_dtype(p.dtype)


def _batch(weights: Sequence[_Weight], target: str, gain: float, compact: bool) -> tuple[MatrixBatch, list[list[Piece]]]:
    """The matrices of ``weights``, reduced to their kept rows and columns if ``compact`` (:mod:`.compact`), stacked."""
    pieces = []
    for w in weights:
        m = masked_matrices(w.param, w.mask, w.layout)
        kept = None if w.mask is None else w.layout.matrices(w.mask.to(m.device))
        pieces.append(split(m, kept, target, gain, compact))
    flat = [p for ps in pieces for p in ps]
    layer_of = [i for i, ps in enumerate(pieces) for _ in ps]
    bests = [b for w in weights for b in w.bests]
    batch = MatrixBatch.stack([p.a for p in flat], [p.c for p in flat], [p.constant for p in flat], bests, layer_of,
                              gain**2)
    return batch, pieces


def _write_back(batch: MatrixBatch, weights: Sequence[_Weight], pieces: Sequence[Sequence[Piece]]) -> None:
    """Copy ``C ⊙ A`` into each weight in place, one copy per weight (a weight is always either entirely old or
    entirely new, and its pruned entries are 0 either way)."""
    start = 0
    with torch.no_grad():
        for w, ps in zip(weights, pieces):
            values = [(batch.a[start + i] * batch.c[start + i])[: p.a.shape[0], : p.a.shape[1]] for i, p in enumerate(ps)]
            w.layout.copy_matrices_(w.param, join(ps, values))
            start += len(ps)


def approximate_isometry(
    model: nn.Module,
    *,
    parameters: ParameterSelection | str | Sequence[str] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    solver: str = "cg",
    steps: int = 10_000,
    lr: float = 0.1,
    target: str = "identity",
    gain: float = 1.0,
    tol: float | None = None,
    progress: bool = True,
) -> IsometryReport:
    """Pull the pruned weights of ``model`` toward isometry, in place and without data (SPP's repair).

    Minimizes ``Σ_w error(C_w ⊙ W_w)`` over the kept entries of every selected weight, with
    ``error(W) = sqrt(Σ_g ‖M_g M_gᵀ − gain² I‖_F²)`` over the matrices ``M_g`` of the weight's layout (one
    per group of a grouped conv, transformers ``Conv1D`` in its ``[out, in]`` orientation, an attention
    ``in_proj_weight`` as its q/k/v blocks; for a linear or ungrouped conv weight this is SPP's
    ``‖(C ⊙ W)(C ⊙ W)ᵀ − I‖_F``), starting from the pruned weights, every mask fixed. Pruned entries are set
    to exactly 0 at the start and stay 0. Only the selected tensors are written (in place: same objects, own
    device and dtype; float32 arithmetic for half-precision weights); every other parameter and buffer stays
    bit-identical; no forward pass is run.

    Args:
        model: the pruned module.
        parameters: which tensors to repair: a :class:`~lightning_prune_init.parameters.ParameterSelection` of
            ``model`` (the one the masks were chosen on), a glob pattern or list of them (``include``), or
            ``None`` (default rule: every Linear, Conv, transformers Conv1D and attention input projection
            weight). Selected tensors with fewer than 2 dimensions (biases, gains) are skipped with a note.
        masks: ``{parameter name: torch.bool tensor}``, ``True`` = kept. Default ``None``: the masks attached
            by ``apply_masks``; a selected weight without a mask is treated as dense; masks of unselected
            tensors are ignored (with a note).
        solver: ``"cg"`` (default): nonlinear conjugate gradient with exact line search on the squared error of
            each matrix (same minimizers; no ``lr``); a matrix stops at ``tol``, when converged at single
            precision (``ConjugateGradient``), or at ``steps``; a matrix stuck far above its lowest error
            restarts from its initial entries plus small seeded noise (at most 4 times, best iterate kept).
            ``"sgd"``: the authors' plain SGD on the unsquared error of each weight, ``steps`` steps of ``lr``
            (``solver="sgd"`` with the other defaults is their exact setting: lr 0.1, 10,000 steps, target ``I``).
        steps: the most solver steps per weight (default 10,000).
        lr: learning rate of ``"sgd"`` (default 0.1); unused by ``"cg"``.
        target: ``"identity"`` (default, the paper's): each ``rows x rows`` Gram against ``gain² I``;
            ``"reachable"``: each Gram on the smaller side, so a matrix with ``cols < rows`` can reach 0.
        gain: target Gram ``gain² I`` (> 0, default 1).
        tol: if set (>= 0), a weight stops once its error is within ``tol`` of its lowest possible error;
            ``None`` (default): ``steps`` steps (``"sgd"``) or convergence (``"cg"``).
        progress: show a tqdm progress bar when writing to a terminal (default True).

    Returns:
        An :class:`~lightning_prune_init.isometry.IsometryReport`; ``str(report)`` is a table, ``report.metrics()``
        flat scalars for a logger. Costs and the authors' setting side by side: ``docs/benchmarks_isometry.md``.

    Raises:
        TypeError / ValueError: bad arguments or masks (the model is then untouched).
        KeyboardInterrupt: re-raised after the weights reached so far are written back; every weight is then
            either its state before the repair or its latest iterate, with pruned entries exactly 0.

    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv1d(4, 4, 3, groups=4))
    >>> mask = torch.rand(8, 8) < 0.5
    >>> report = approximate_isometry(net, masks={"0.weight": mask}, progress=False)
    >>> [x.error_after < 1e-3 for x in report.layers.values()], bool((net[0].weight[~mask] == 0).all())
    ([True, True], True)
    >>> round(float(net[1].weight.detach().norm(dim=(1, 2)).min()), 4)  # depthwise: each channel's filter a unit vector
    1.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    solver = check_choice("solver", solver, SOLVERS)
    steps = check_int("steps", steps, minimum=0)
    lr = check_number("lr", lr, minimum=0.0, minimum_inclusive=False)
    target = check_choice("target", target, TARGETS)
    gain = check_number("gain", gain, minimum=0.0, minimum_inclusive=False)
    tol = check_number("tol", tol, minimum=0.0, allow_none=True)
    progress = check_bool("progress", progress)
    selection = as_selection(model, parameters)
    resolved = resolve_masks(model, masks)

    start = time.perf_counter()
    notes: list[str] = []
    weight_masks: dict[str, Tensor] = {}
    for key, mask in resolved.items():
        if key in selection:
            weight_masks[selection.canonical(key)] = mask
        else:
            notes.append(f"{key}: has a mask but is not in the selection; not repaired")
    weights: dict[str, _Weight] = {}
    with torch.no_grad():
        for name, entry in selection.entries.items():
            p = selection[name]
            if not entry.layout.is_matrix or p.dim() < 2:
                notes.append(f"{name}: skipped, it has fewer than 2 dimensions (not a linear map)")
            elif not p.is_floating_point():
                notes.append(f"{name}: skipped, it is not floating point ({p.dtype})")
            elif p.numel() == 0:
                notes.append(f"{name}: skipped, it is empty")
            else:
                weights[name] = _Weight(name, p, entry.layout, weight_masks.get(name), target, gain)
        for w in weights.values():
            if w.mask is not None:
                w.param.masked_fill_(~w.mask.to(w.param.device), 0)

    plan: dict[tuple[Any, ...], list[_Weight]] = {}
    for w in weights.values():
        plan.setdefault(w.key, []).append(w)
    steps_taken, times = _solve(list(plan.values()), solver, steps, lr, target, gain, tol, progress)

    layers = {}
    with torch.no_grad():
        for name, w in weights.items():
            layers[name] = LayerIsometry(
                name=name, shape=tuple(w.param.shape), kind=w.layout.kind, groups=w.groups, rows=w.rows,
                cols=w.cols, density=w.density, error_before=w.error_before, error_after=w.error(target, gain),
                best_possible=float(sum(b * b for b in w.bests) ** 0.5), steps=steps_taken[name], time_s=times[name],
            )
    return IsometryReport(
        layers=layers, solver=solver, target=target, gain=gain, steps=steps, lr=lr, tol=tol,
        time_s=time.perf_counter() - start, notes=tuple(notes),
    )


def _solve(
    plan: list[list[_Weight]],
    solver: str,
    steps: int,
    lr: float,
    target: str,
    gain: float,
    tol: float | None,
    progress: bool,
) -> tuple[dict[str, int], dict[str, float]]:
    """Run the solver on each batch of ``plan`` and write the weights back; ``(steps, time)`` per weight."""
    from tqdm.auto import tqdm

    bar = tqdm(total=steps * len(plan), desc="approximate isometry", unit="step",
               disable=None if progress else True, leave=False)
    steps_taken: dict[str, int] = {}
    times: dict[str, float] = {}
    batch: MatrixBatch | None = None
    current: list[_Weight] = []
    pieces: list[list[Piece]] = []
    try:
        with torch.no_grad():
            for index, weights in enumerate(plan):
                began = time.perf_counter()
                # the authors' SGD runs on whole matrices: the same arithmetic as before, to the bit, so the
                # reproduction tables do not move; cg drops the rows and columns with no kept entry
                batch, pieces = _batch(weights, target, gain, compact=solver == "cg")
                current = weights
                _, k, wide = batch.a.shape
                bar.set_description(f"approximate isometry {index + 1}/{len(plan)} [{k}x{wide}]x{len(batch.a)}")
                with _threads_for(batch, solver):
                    _run(batch, solver, steps, lr, gain**2, tol, bar)
                _write_back(batch, weights, pieces)
                per_weight = torch.zeros_like(batch.layer_best, dtype=torch.long).scatter_reduce_(
                    0, batch.layer_of, batch.steps, "amax", include_self=False)
                steps_taken.update(zip((w.name for w in weights), per_weight.tolist()))  # waits for the device
                batch = None
                times.update((w.name, time.perf_counter() - began) for w in weights)
    except KeyboardInterrupt:
        if batch is not None:
            _write_back(batch, current, pieces)
        warnings.warn(
            "approximate_isometry was interrupted: the weights reached so far were written back (pruned entries "
            "are 0); weights not reached yet keep their pruned initial values",
            RuntimeWarning,
            stacklevel=3,
        )
        raise
    finally:
        bar.close()
    return steps_taken, times


#: A cg batch of fewer entries than this runs on one CPU thread (see :func:`_threads_for`).
SMALL_BATCH = 2**21


@contextlib.contextmanager
def _threads_for(batch: MatrixBatch, solver: str) -> Iterator[None]:
    """One intra-op thread while cg solves a small CPU batch (fewer than :data:`SMALL_BATCH` entries), the caller's
    setting otherwise (restored on exit). cg takes ~20 small operations per step, each a parallel region: on such
    matrices threads gain little even on an idle machine, and on a busy one each region waits for a descheduled
    thread (resnet18 at 90%, 2 threads, load 9: 136 s with threads everywhere, 33 s like this). The authors' SGD
    keeps the caller's setting (its arithmetic is left as it was)."""
    threads = torch.get_num_threads()
    if solver != "cg" or threads == 1 or batch.a.device.type != "cpu" or batch.a.numel() >= SMALL_BATCH:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(batch: MatrixBatch, solver: str, steps: int, lr: float, gain2: float, tol: float | None, bar: Any) -> None:
    """At most ``steps`` solver steps on ``batch``, the bar advanced about 100 times."""
    refresh = max(1, min(100, steps // 100))
    active = torch.ones(len(batch.a), dtype=torch.bool, device=batch.a.device)
    cg = ConjugateGradient(batch, gain2, tol) if solver == "cg" else None
    done = 0
    try:
        for step in range(steps):
            err = cg.step(tol, active) if cg is not None else sgd_step(batch, lr, gain2, tol, active)
            batch.steps += active
            at_refresh = (step + 1) % refresh == 0 or step + 1 == steps
            if at_refresh:
                bar.update(step + 1 - done)
                done = step + 1
                if not bar.disable:
                    bar.set_postfix(error=f"{float(err.sum()):.4g}", refresh=False)
            if (cg is not None or (tol is not None and at_refresh)) and not bool(active.any()):
                break
    finally:
        if cg is not None:
            cg.finish()
    bar.update(steps - done)
