"""Data-free approximate isometry repair of pruned weights (SPP's "AI" step, METHOD.md §3).

After pruning, the sparse weights ``C ⊙ W`` are no longer orthogonal. :func:`approximate_isometry` moves the
kept entries so that each layer's Gram over output units approaches the identity, with the mask fixed and
without any data:

    minimize  Σ_l ‖ (C_l ⊙ W_l)(C_l ⊙ W_l)ᵀ − I ‖_F      (not squared; conv weights reshaped to [c_out, c_in·k·k])

The faithful default is the authors' setting: plain SGD, learning rate 0.1, 10,000 steps, target exactly
``I``, every conv and linear weight (first, last and shortcut layers included), biases and norm layers
untouched. Options a careful user may want: ``tol`` (stop a layer once it is within ``tol`` of the best it
can reach), ``target="reachable"`` (Gram on the smaller side, so layers with ``fan_in < c_out`` can reach 0),
``gain`` (target ``gain² I``) and ``solver="cg"`` (nonlinear conjugate gradient with exact line search on the
squared per-layer error; the layer terms are independent, so it has the same minimizers, and it reaches a
lower objective than the faithful 10,000 SGD steps in a small fraction of the time, see
``docs/benchmarks_isometry.md``).

Why some layers cannot reach 0: ``(C ⊙ W)(C ⊙ W)ᵀ`` has rank at most ``r``, the structural rank of the mask
(the largest number of kept entries no two of which share a row or a column; ``r <= min(c_out, fan_in)``, and
less when pruning removed whole units). Its ``c_out − r`` zero eigenvalues make the error at least
``gain² · sqrt(c_out − r)``, and that value is attained (put ``gain`` on the entries of a maximum matching and
0 elsewhere). The report gives this best possible error for every layer. The same construction shows that
the objective alone does not ask for good weights (a masked permutation-like matrix attains it): the repair
is useful because it starts from the pruned weights and moves locally. Sparse layers also have spurious
stationary points with a Gram eigenvalue stuck at 0 although the mask allows full rank; the faithful SGD
ends in one for some layers (error ≈ 1 where 0 is possible), and ``solver="cg"`` restarts such layers.

Implementation notes: the error is computed on the smaller side of the weight
(``‖WWᵀ − I_m‖² = ‖WᵀW − I_n‖² + (m − n)`` when ``n < m``), which gives the same values and gradients with
fewer operations; layers with the same reshaped shape, device and dtype are stacked and solved together.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init.parameters import prunable_parameters

__all__ = [
    "SOLVERS",
    "TARGETS",
    "IsometryReport",
    "LayerIsometry",
    "approximate_isometry",
    "best_possible_error",
    "orthogonality_error",
    "orthogonality_errors",
]

#: Accepted values of ``target``: ``"identity"`` (``c_out x c_out`` Gram against ``gain² I``, the paper's) or
#: ``"reachable"`` (Gram on the smaller side, ``min(c_out, fan_in)`` square).
TARGETS: tuple[str, ...] = ("identity", "reachable")

#: Accepted values of ``approximate_isometry(solver=...)``.
SOLVERS: tuple[str, ...] = ("sgd", "cg")


# --- validation helpers ------------------------------------------------------------------------------------
def _check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}")
    return target


def _check_positive(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{argument}` must be a number > 0, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{argument}` must be a finite number > 0, got {value}")
    return float(value)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision used for the Gram computations: the parameter's, at least float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _as_matrix(weight: Tensor, mask: Tensor | None, argument: str = "weight") -> Tensor:
    """``(mask ⊙ weight)`` reshaped to ``[c_out, fan_in]`` in a precision of at least float32."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"`{argument}` must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise ValueError(
            f"`{argument}` must have at least 2 dimensions ([out, in] or [c_out, c_in, *kernel]), "
            f"got shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"`{argument}` must be floating point, got {weight.dtype}")
    w = weight.detach().to(_work_dtype(weight.dtype))
    if mask is not None:
        _check_mask(mask, weight.shape, "mask")
        w = w * mask.to(device=w.device, dtype=w.dtype)
    return w.reshape(weight.shape[0], -1)


def _check_mask(mask: Any, shape: torch.Size, name: str) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask {name!r} must be a torch.bool tensor (True = kept), got {got}")
    if mask.shape != shape:
        raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, its parameter has {tuple(shape)}")


# --- errors -------------------------------------------------------------------------------------------------
def orthogonality_error(
    weight: Tensor,
    mask: Tensor | None = None,
    *,
    target: str = "identity",
    gain: float = 1.0,
) -> Tensor:
    """SPP's per-layer isometry error ``‖(C ⊙ W)(C ⊙ W)ᵀ − gain² I‖_F`` (Frobenius norm, not squared).

    Args:
        weight: ``[out, in]`` or ``[c_out, c_in, *kernel]`` (reshaped to ``[c_out, c_in·prod(kernel)]``).
        mask: optional ``torch.bool`` tensor of ``weight``'s shape, ``True`` = kept; ``None`` = dense.
        target: ``"identity"`` (default): the ``c_out x c_out`` Gram over output units, as in the paper;
            ``"reachable"``: the Gram on the smaller side (``fan_in x fan_in`` when ``fan_in < c_out``), which an
            exactly orthogonal weight brings to 0 whatever its shape. The two agree when ``c_out <= fan_in``.
        gain: the target is ``gain² I`` (> 0, default 1).

    Returns:
        A 0-dim tensor (float32, or float64 for float64 weights) on ``weight``'s device; differentiable.
    """
    target = _check_target(target)
    gain = _check_positive(gain, "gain")
    m = _as_matrix(weight, mask)
    c_out, fan_in = m.shape
    gram = m @ m.T if c_out <= fan_in else m.T @ m
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    squared = torch.sum((gram - gain**2 * eye) ** 2)
    if target == "identity" and c_out > fan_in:
        squared = squared + gain**4 * (c_out - fan_in)
    return torch.sqrt(squared)


def _structural_rank(mask: Tensor) -> int:
    """Largest number of ``True`` entries of a 2-D mask with no two in the same row or column."""
    rows, cols = mask.shape
    if bool(mask.all()):
        return min(rows, cols)
    m = mask.detach().to("cpu")
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import structural_rank
    except ImportError:  # scipy comes with scikit-learn; keep a plain fallback all the same
        return _matching_size(m)
    return int(structural_rank(csr_matrix(m.numpy().astype("int8"))))


def _matching_size(mask: Tensor) -> int:
    """Maximum bipartite matching by augmenting paths (Kuhn); rows on the smaller side."""
    if mask.shape[0] > mask.shape[1]:
        mask = mask.T
    adjacency = [row.nonzero().flatten().tolist() for row in mask]
    match_of_col: dict[int, int] = {}

    def augment(row: int, seen: set[int]) -> bool:
        stack = [(row, iter(adjacency[row]))]
        path: list[tuple[int, int]] = []
        while stack:
            r, it = stack[-1]
            for c in it:
                if c in seen:
                    continue
                seen.add(c)
                path.append((r, c))
                if c not in match_of_col:
                    for rr, cc in path:
                        match_of_col[cc] = rr
                    return True
                stack.append((match_of_col[c], iter(adjacency[match_of_col[c]])))
                break
            else:
                stack.pop()
                if path:
                    path.pop()
        return False

    return sum(augment(r, set()) for r in range(mask.shape[0]))


def best_possible_error(
    weight: Tensor,
    mask: Tensor | None = None,
    *,
    target: str = "identity",
    gain: float = 1.0,
) -> float:
    """The smallest :func:`orthogonality_error` any weight with this shape and mask can have.

    ``gain² · sqrt(k − r)``, with ``k`` the side of the Gram (``c_out`` for ``"identity"``,
    ``min(c_out, fan_in)`` for ``"reachable"``) and ``r`` the structural rank of the reshaped mask (the size of
    a maximum matching between kept rows and columns): 0 for a dense weight with ``fan_in >= c_out``,
    ``sqrt(c_out − fan_in)`` for a dense weight with ``fan_in < c_out`` under ``"identity"``, and at least
    ``sqrt(units removed)`` when pruning removed whole units. Only ``weight``'s shape is used.
    """
    target = _check_target(target)
    gain = _check_positive(gain, "gain")
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        raise ValueError("`weight` must be a tensor with at least 2 dimensions")
    c_out = weight.shape[0]
    fan_in = weight[0].numel()
    if mask is None:
        rank = min(c_out, fan_in)
    else:
        _check_mask(mask, weight.shape, "mask")
        rank = _structural_rank(mask.reshape(c_out, fan_in))
    side = c_out if target == "identity" else min(c_out, fan_in)
    return gain**2 * math.sqrt(side - rank)


def _resolve_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if masks is None:
        try:
            from lightning_prune_init.masks import get_masks
        except ImportError:
            return {}
        return dict(get_masks(model))
    if not isinstance(masks, Mapping):
        raise TypeError(f"`masks` must be a mapping of parameter name to bool tensor, got {type(masks).__name__}")
    names = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in names:
            raise ValueError(
                f"mask key {name!r} is not a parameter of {type(model).__name__}: keys must be the names "
                "`model.named_parameters()` yields"
            )
        _check_mask(mask, names[name].shape, name)
    return dict(masks)


def orthogonality_errors(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    *,
    target: str = "identity",
    gain: float = 1.0,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, float]:
    """:func:`orthogonality_error` of every prunable weight of ``model`` (default: conv and linear weights).

    ``masks`` default to those attached to ``model`` (dense where none); ``include``/``exclude`` as in
    :func:`~lightning_prune_init.parameters.prunable_parameters`.
    """
    params = prunable_parameters(model, include=include, exclude=exclude)
    resolved = _resolve_masks(model, masks)
    with torch.no_grad():
        return {
            name: float(orthogonality_error(p, resolved.get(name), target=target, gain=gain))
            for name, p in params.items()
        }


# --- report -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerIsometry:
    """The repair of one weight. Errors are :func:`orthogonality_error` under the report's target and gain.

    Attributes:
        name: parameter name, as ``model.named_parameters()`` yields it.
        shape: the parameter's shape.
        c_out, fan_in: the reshaped weight is ``[c_out, fan_in]``.
        density: kept fraction of the mask (1.0 when dense).
        error_before, error_after: error of ``C ⊙ W`` before and after the repair.
        best_possible: the lowest error any weight with this mask can have (:func:`best_possible_error`);
            > 0 means the target is unreachable for this layer.
        steps: solver steps this layer took (fewer than requested when it met ``tol`` or, for ``"cg"``,
            converged).
        time_s: wall time of the batch of same-shape layers this layer was solved in, seconds (shared by
            the layers of that batch).
    """

    name: str
    shape: tuple[int, ...]
    c_out: int
    fan_in: int
    density: float
    error_before: float
    error_after: float
    best_possible: float
    steps: int
    time_s: float

    @property
    def reachable(self) -> bool:
        """Whether the mask allows an error of 0."""
        return self.best_possible == 0.0


@dataclass(frozen=True)
class IsometryReport:
    """What :func:`approximate_isometry` did, per layer and in total (sums of the per-layer errors)."""

    layers: dict[str, LayerIsometry] = field(default_factory=dict)
    solver: str = "sgd"
    target: str = "identity"
    gain: float = 1.0
    steps: int = 0
    lr: float = 0.0
    tol: float | None = None
    time_s: float = 0.0

    @property
    def error_before(self) -> float:
        return sum(x.error_before for x in self.layers.values())

    @property
    def error_after(self) -> float:
        return sum(x.error_after for x in self.layers.values())

    @property
    def best_possible(self) -> float:
        return sum(x.best_possible for x in self.layers.values())

    def unreachable(self) -> list[str]:
        """Names of the layers whose mask does not allow an error of 0."""
        return [name for name, x in self.layers.items() if not x.reachable]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML friendly)."""
        return {
            "solver": self.solver,
            "target": self.target,
            "gain": self.gain,
            "steps": self.steps,
            "lr": self.lr,
            "tol": self.tol,
            "time_s": self.time_s,
            "error_before": self.error_before,
            "error_after": self.error_after,
            "best_possible": self.best_possible,
            "layers": {
                name: {
                    "shape": list(x.shape),
                    "c_out": x.c_out,
                    "fan_in": x.fan_in,
                    "density": x.density,
                    "error_before": x.error_before,
                    "error_after": x.error_after,
                    "best_possible": x.best_possible,
                    "steps": x.steps,
                    "time_s": x.time_s,
                }
                for name, x in self.layers.items()
            },
        }

    def metrics(self, prefix: str = "isometry") -> dict[str, float]:
        """Flat scalars for a logger: ``<prefix>/error_before``, ``<prefix>/error_after``, ``<prefix>/best_possible``,
        ``<prefix>/time_s`` and per parameter ``<prefix>/error_before/<name>``, ``<prefix>/error_after/<name>``,
        ``<prefix>/best_possible/<name>``, ``<prefix>/steps/<name>``."""
        out = {
            f"{prefix}/error_before": self.error_before,
            f"{prefix}/error_after": self.error_after,
            f"{prefix}/best_possible": self.best_possible,
            f"{prefix}/time_s": self.time_s,
        }
        for name, x in self.layers.items():
            out[f"{prefix}/error_before/{name}"] = x.error_before
            out[f"{prefix}/error_after/{name}"] = x.error_after
            out[f"{prefix}/best_possible/{name}"] = x.best_possible
            out[f"{prefix}/steps/{name}"] = float(x.steps)
        return out

    def __str__(self) -> str:
        width = max([len("parameter")] + [len(n) for n in self.layers])
        head = (
            f"{'parameter':<{width}}  {'[c_out, fan_in]':>16}  {'density':>8}  {'before':>9}  {'after':>9}  "
            f"{'best':>9}  {'steps':>6}"
        )
        lines = [
            f"approximate isometry: solver={self.solver}, target={self.target}, gain={self.gain:g}, "
            f"{self.time_s:.2f} s",
            head,
        ]
        for name, x in self.layers.items():
            dims = f"[{x.c_out}, {x.fan_in}]"
            lines.append(
                f"{name:<{width}}  {dims:>16}  {x.density:>8.2%}  {x.error_before:>9.4f}  {x.error_after:>9.4f}  "
                f"{x.best_possible:>9.4f}{'' if x.reachable else '*'} {x.steps:>6}"
            )
        lines.append(
            f"{'total':<{width}}  {'':>16}  {'':>8}  {self.error_before:>9.4f}  {self.error_after:>9.4f}  "
            f"{self.best_possible:>9.4f}"
        )
        if self.unreachable():
            lines.append("* target unreachable with this mask: 'best' is the lowest error possible")
        return "\n".join(lines)


# --- the solvers --------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """Same-shape layers stacked as wide matrices ``A [B, k, L]`` (``k <= L``); the Gram is ``A Aᵀ`` (``k x k``)."""

    names: list[str]
    params: list[nn.Parameter]
    transposed: list[bool]
    a: Tensor  # [B, k, L], the kept entries of C ⊙ W (pruned entries 0)
    c: Tensor  # [B, k, L], mask as 0/1 in a's dtype
    constant: Tensor  # [B], gain⁴ (c_out − k) under "identity", else 0
    best: Tensor  # [B], best possible error
    steps: Tensor  # [B], steps taken

    def write_back(self) -> None:
        """Copy ``C ⊙ A`` into the parameters in place (each copy is one operation: a layer is always either
        entirely old or entirely new, and its pruned entries are 0 either way)."""
        with torch.no_grad():
            for i, p in enumerate(self.params):
                w = self.a[i] * self.c[i]
                w = w.T if self.transposed[i] else w
                p.copy_(w.reshape(p.shape))


def _error(a: Tensor, gain2: float, constant: Tensor) -> tuple[Tensor, Tensor]:
    """``(E, error)``: ``E = A Aᵀ − gain² I`` ``[B, k, k]`` and the per-layer error ``[B]``."""
    e = torch.bmm(a, a.mT)
    e.diagonal(dim1=-2, dim2=-1).sub_(gain2)
    return e, torch.sqrt(e.pow(2).sum((-2, -1)) + constant)


def _stop_met(err: Tensor, group: _Group, tol: float | None, active: Tensor) -> None:
    """Freeze (in place) the layers of ``active`` whose error is within ``tol`` of their best possible error."""
    if tol is not None:
        active &= err - group.best > tol


def _sgd_step(group: _Group, lr: float, gain2: float, tol: float | None, active: Tensor) -> Tensor:
    """One plain SGD step on the unsquared error of the active layers; returns the errors before it ``[B]``."""
    e, err = _error(group.a, gain2, group.constant)
    _stop_met(err, group, tol, active)
    # d‖E‖/dA = 2 E A / ‖E‖ (E symmetric), masked; 0 where the error is exactly 0.
    scale = torch.where(err > 0, -2.0 * lr / err.clamp_min(torch.finfo(err.dtype).tiny), 0.0)
    if tol is not None:
        scale = scale * active
    update = torch.bmm(e, group.a)
    update.mul_(group.c).mul_(scale[:, None, None])
    group.a.add_(update)
    return err


def _line_minimum(s0: Tensor, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor) -> tuple[Tensor, Tensor]:
    """Minimize ``p(t) = s0 + c0 t + c1 t²/2 + c2 t³/3 + c3 t⁴/4`` over ``t >= 0`` per row (float64 inputs).

    ``p' = c3 t³ + c2 t² + c1 t + c0`` (``c3 > 0``); the minimizer is 0 or a real root of ``p'``, and evaluating
    ``p`` at every root's real part (clamped to >= 0) and at 0 finds it. Returns ``(t, p(t))``.
    """
    safe = c3 > 0
    c3s = torch.where(safe, c3, 1.0)
    companion = torch.zeros(c3.shape + (3, 3), dtype=c3.dtype, device=c3.device)
    companion[..., 0, 0] = -c2 / c3s
    companion[..., 0, 1] = -c1 / c3s
    companion[..., 0, 2] = -c0 / c3s
    companion[..., 1, 0] = 1.0
    companion[..., 2, 1] = 1.0
    roots = torch.linalg.eigvals(companion).real.clamp_min(0.0)
    candidates = torch.cat([torch.zeros_like(c3)[:, None], roots], dim=1)  # [B, 4]
    t = candidates
    values = s0[:, None] + t * (c0[:, None] + t * (c1[:, None] / 2 + t * (c2[:, None] / 3 + t * c3[:, None] / 4)))
    best = values.argmin(dim=1, keepdim=True)
    t_best = torch.where(safe, candidates.gather(1, best).squeeze(1), 0.0)
    p_best = torch.where(safe, values.gather(1, best).squeeze(1), s0)
    return t_best, p_best


class _ConjugateGradient:
    """Polak–Ribière+ nonlinear CG on ``‖A Aᵀ − gain² I‖²`` per layer, with exact line search.

    Along a direction ``D`` the squared error is a quartic in the step ``t``
    (``A Aᵀ(t) = A Aᵀ + t (A Dᵀ + D Aᵀ) + t² D Dᵀ``), so the line search is exact and needs no learning rate.

    A layer is frozen as converged when its error is within ``tol`` of its best possible error, or, with
    ``tol=None``, when the reducible part of its error, ``sqrt(error² − best²)``, is below
    ``20 · eps_float32 · gain² · k`` (about where float32 rounding in the ``k x k`` Gram dominates), or when a
    steepest-descent step no longer improves it.

    A sparse layer sometimes converges to a spurious stationary point with a Gram eigenvalue stuck at 0 (a
    row starved of columns that other rows hold: escaping needs a coordinated move of many rows, which
    gradient steps and local random kicks did not find in our trials). The faithful SGD meets the same
    points. When a layer stops that far (squared error more than ``gain⁴/2`` above its best possible), it starts again
    from its initial weights plus small seeded noise on the kept entries (10% of the entry size of a
    ``gain``-orthogonal matrix of this density), at most ``max_restarts`` times; the best iterate is kept.
    """

    max_restarts = 4

    def __init__(self, group: _Group, gain2: float, tol: float | None) -> None:
        self.group = group
        self.gain2 = gain2
        a = group.a
        batch, k, _ = a.shape
        self.start = a.clone()
        self.direction = torch.zeros_like(a)
        self.previous: Tensor | None = None
        self.restart = torch.ones(batch, dtype=torch.bool, device=a.device)  # next direction: -grad
        self.converged = torch.zeros(batch, dtype=torch.bool, device=a.device)
        self.restarts = torch.zeros(batch, dtype=torch.long, device=a.device)
        self.best_error = torch.full((batch,), math.inf, dtype=a.dtype, device=a.device)
        self.best_a: Tensor | None = None
        self.stall = 16 * torch.finfo(a.dtype).eps
        # without tol: stop at single precision, whatever the dtype (float64 would crawl on for 1e-12)
        self.floor = 20 * torch.finfo(torch.float32).eps * gain2 * k if tol is None else 0.0
        self.noise = 0.1 * math.sqrt(gain2) * torch.sqrt(k / group.c.sum((-2, -1)).clamp_min(1.0))
        self.generator: torch.Generator | None = None

    def _start_again(self, which: Tensor, err: Tensor) -> None:
        """Remember the current iterate of the layers ``which`` if it is their best, then restart them."""
        a, c = self.group.a, self.group.c
        if self.best_a is None:
            self.best_a = torch.zeros_like(a)
        better = which & (err < self.best_error)
        self.best_a[better] = a[better]
        self.best_error = torch.where(better, err, self.best_error)
        if self.generator is None:
            self.generator = torch.Generator(device=a.device)
            self.generator.manual_seed(0)
        noise = torch.randn(a.shape, generator=self.generator, device=a.device, dtype=a.dtype)
        noise.mul_(c).mul_(self.noise[:, None, None]).add_(self.start)
        a[which] = noise[which]
        self.restarts += which
        self.restart |= which

    def finish(self) -> None:
        """Put back the best iterate of the layers whose last restart ended worse than an earlier attempt."""
        if self.best_a is None:
            return
        _, err = _error(self.group.a, self.gain2, self.group.constant)
        worse = self.best_error < err
        self.group.a[worse] = self.best_a[worse]

    def step(self, tol: float | None, active: Tensor) -> Tensor:
        g, a = self.group, self.group.a
        e, err = _error(a, self.gain2, g.constant)
        _stop_met(err, g, tol, active)
        # the reducible part of the error: sqrt(error² − best²) (= error when the target is reachable)
        self.converged |= (err.pow(2) - g.best.pow(2)).clamp_min(0).sqrt() <= self.floor
        grad = torch.bmm(e, a).mul_(g.c).mul_(4.0)  # d‖E‖²/dA, masked
        d = self.direction
        if self.previous is None:
            d.copy_(-grad)
            steepest = torch.ones_like(self.restart)
        else:
            prev = self.previous
            beta = (grad * (grad - prev)).sum((-2, -1)) / (prev * prev).sum((-2, -1)).clamp_min(
                torch.finfo(a.dtype).tiny
            )
            beta = torch.where(self.restart, 0.0, beta.clamp_min(0.0))
            d.mul_(beta[:, None, None]).sub_(grad)
            uphill = (d * grad).sum((-2, -1)) >= 0
            if bool(uphill.any()):
                d[uphill] = -grad[uphill]
                beta = torch.where(uphill, 0.0, beta)
            steepest = beta == 0
        self.previous = grad
        x = torch.bmm(a, d.mT)
        s = x + x.mT
        q = torch.bmm(d, d.mT)
        f64 = torch.float64
        s0 = e.pow(2).sum((-2, -1)).to(f64)
        c0 = 2 * (e * s).sum((-2, -1)).to(f64)
        c1 = 2 * (s.pow(2).sum((-2, -1)) + 2 * (e * q).sum((-2, -1))).to(f64)
        c2 = 6 * (s * q).sum((-2, -1)).to(f64)
        c3 = 4 * q.pow(2).sum((-2, -1)).to(f64)
        t, p = _line_minimum(s0, c0, c1, c2, c3)
        # no measurable progress on the reducible part of ‖E‖² (the part above its lowest possible value)
        reducible = (s0 - (g.best.to(f64) ** 2 - g.constant.to(f64))).clamp_min(0)
        stalled = (s0 - p) <= self.stall * torch.maximum(reducible, self.stall * s0)
        stuck = stalled & steepest & ~self.converged
        far = (err.to(f64) ** 2 - g.best.to(f64) ** 2) > 0.5 * self.gain2**2
        again = stuck & far & (self.restarts < self.max_restarts) & active
        self.converged |= stuck & ~again
        active &= ~self.converged
        t = torch.where(stalled | ~active, 0.0, t).to(a.dtype)
        self.restart = stalled
        a.add_(d * t[:, None, None])  # d is masked, so pruned entries stay 0
        if bool(again.any()):
            self._start_again(again, err)
        return err


# --- the repair ---------------------------------------------------------------------------------------------
def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"`steps` must be an int >= 0, got {type(steps).__name__}")
    if steps < 0:
        raise ValueError(f"`steps` must be >= 0, got {steps}")
    return steps


def _plan_groups(params: Mapping[str, nn.Parameter]) -> list[list[str]]:
    """Names of the layers solved together: same ``(min, max)`` of ``(c_out, fan_in)``, device and work dtype."""
    buckets: dict[tuple[Any, ...], list[str]] = {}
    for name, p in params.items():
        c_out, fan_in = p.shape[0], p[0].numel()
        key = (min(c_out, fan_in), max(c_out, fan_in), p.device, _work_dtype(p.dtype))
        buckets.setdefault(key, []).append(name)
    return list(buckets.values())


def _build_group(
    names: Sequence[str],
    params: Mapping[str, nn.Parameter],
    masks: Mapping[str, Tensor],
    bests: Mapping[str, float],
    target: str,
    gain: float,
) -> _Group:
    """Stack the masked weights of ``names`` as wide matrices (transposing those with ``c_out > fan_in``)."""
    a_list, c_list, constants, transposed = [], [], [], []
    for name in names:
        p = params[name]
        c_out, fan_in = p.shape[0], p[0].numel()
        dtype = _work_dtype(p.dtype)
        mask = masks.get(name)
        kept = (
            torch.ones(c_out, fan_in, device=p.device, dtype=dtype)
            if mask is None
            else mask.to(device=p.device).reshape(c_out, fan_in).to(dtype)
        )
        w = p.detach().to(dtype).reshape(c_out, fan_in) * kept
        flip = c_out > fan_in
        a_list.append(w.T if flip else w)
        c_list.append(kept.T if flip else kept)
        transposed.append(flip)
        constants.append(gain**4 * (c_out - min(c_out, fan_in)) if target == "identity" else 0.0)
    a = torch.stack(a_list).contiguous()
    return _Group(
        names=list(names),
        params=[params[n] for n in names],
        transposed=transposed,
        a=a,
        c=torch.stack(c_list).contiguous(),
        constant=torch.tensor(constants, device=a.device, dtype=a.dtype),
        best=torch.tensor([bests[n] for n in names], device=a.device, dtype=a.dtype),
        steps=torch.zeros(len(names), device=a.device, dtype=torch.long),
    )


def approximate_isometry(
    model: nn.Module,
    *,
    steps: int = 10_000,
    lr: float = 0.1,
    masks: Mapping[str, Tensor] | None = None,
    solver: str = "sgd",
    target: str = "identity",
    gain: float = 1.0,
    tol: float | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    progress: bool = True,
) -> IsometryReport:
    """Pull the pruned weights of ``model`` toward layerwise isometry, in place and without data (SPP §3).

    Minimizes ``Σ_l ‖(C_l ⊙ W_l)(C_l ⊙ W_l)ᵀ − gain² I‖_F`` over the kept entries of every selected weight,
    starting from the pruned weights, with every mask fixed. Pruned entries are set to exactly 0 at the start
    and stay 0; biases, norm layers, buffers and unselected parameters are not touched; no forward pass is
    run. Parameters are written in place (same objects), on their own device and in their own dtype (the
    computation runs in float32 for half-precision parameters). The defaults are the authors' settings.

    Args:
        model: the pruned module.
        steps: maximum number of solver steps per layer (default 10,000, the authors' setting).
        lr: learning rate of ``solver="sgd"`` (default 0.1); not used by ``"cg"``.
        masks: ``{parameter name: torch.bool tensor}``, ``True`` = kept. Default ``None``: the masks attached to
            ``model`` by :func:`~lightning_prune_init.masks.apply_masks`; a selected weight without a mask
            is treated as dense.
        solver: ``"sgd"`` (default, faithful): plain SGD on the unsquared per-layer error. ``"cg"``: nonlinear
            conjugate gradient with exact line search on the squared per-layer error (same minimizers: the
            layers are independent), which converges to a lower objective far faster and needs no ``lr``; a
            layer stops when its error is within ``tol`` of its best possible (``tol=None``: when
            ``sqrt(error² − best²)`` is below ``20·eps_float32·gain²·min(c_out, fan_in)``, about 2.4e-4 for 100
            units), when it no longer improves, or at ``steps``. A layer that stops far above its best
            possible error (a Gram eigenvalue stuck at 0, a spurious stationary point that the faithful SGD
            also meets) starts again from its initial weights plus small seeded noise on the kept entries, at
            most 4 times, keeping its best iterate (the global RNG is not used).
        target: ``"identity"`` (default, faithful): ``c_out x c_out`` Gram against ``gain² I``. ``"reachable"``:
            the Gram on the smaller side, so a layer with ``fan_in < c_out`` can reach 0 (same minimizers;
            errors and the SGD step size differ).
        gain: target Gram ``gain² I`` (> 0, default 1).
        tol: if set (>= 0), a layer stops once its error is within ``tol`` of its best possible error
            (:func:`best_possible_error`); ``None`` (default) runs ``steps`` steps (``"sgd"``) or until
            convergence at single precision (``"cg"``).
        include, exclude: glob patterns on parameter names, as in
            :func:`~lightning_prune_init.parameters.prunable_parameters` (default: every conv and linear weight,
            first, last and shortcut layers included).
        progress: show a tqdm progress bar when writing to a terminal (default True).

    Returns:
        An :class:`IsometryReport`: per layer the error before and after, the best possible error, the steps
        taken and the time; ``str(report)`` is a table, ``report.metrics()`` flat scalars for a logger.

    Raises:
        TypeError / ValueError: bad arguments or masks (the model is then untouched).
        KeyboardInterrupt: re-raised after the weights reached so far are written back; every weight is then
            either its state before the repair or its latest iterate, with pruned entries exactly 0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    steps = _check_steps(steps)
    lr = _check_positive(lr, "lr")
    gain = _check_positive(gain, "gain")
    target = _check_target(target)
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"`tol` must be None or a finite number >= 0, got {tol!r}")
        tol = float(tol)
    params = prunable_parameters(model, include=include, exclude=exclude)
    resolved = _resolve_masks(model, masks)
    for name, p in params.items():
        if p.dim() < 2 or not p.is_floating_point():
            raise ValueError(
                f"approximate_isometry repairs floating-point weights with at least 2 dimensions; {name!r} has "
                f"shape {tuple(p.shape)} and dtype {p.dtype} (leave biases and norm parameters out of `include`)"
            )
    params = {n: p for n, p in params.items() if p.numel() > 0}
    layer_masks = {n: resolved[n] for n in params if n in resolved}

    start = time.perf_counter()
    info: dict[str, tuple[int, int, float, float, float]] = {}  # c_out, fan_in, density, error before, best
    with torch.no_grad():
        for name, p in params.items():
            mask = layer_masks.get(name)
            info[name] = (
                p.shape[0],
                p[0].numel(),
                1.0 if mask is None else float(mask.float().mean()),
                float(orthogonality_error(p, mask, target=target, gain=gain)),
                best_possible_error(p, mask, target=target, gain=gain),
            )
        for name, mask in layer_masks.items():
            params[name].masked_fill_(~mask.to(params[name].device), 0)
    plan = _plan_groups(params)
    bests = {name: values[4] for name, values in info.items()}

    from tqdm.auto import tqdm

    gain2 = gain**2
    refresh = max(1, min(100, steps // 100))
    bar = tqdm(
        total=steps * len(plan),
        desc="approximate isometry",
        unit="step",
        disable=None if progress else True,
        leave=False,
    )
    steps_taken: dict[str, int] = {}
    times: dict[str, float] = {}
    current: _Group | None = None
    try:
        with torch.no_grad():
            for index, names in enumerate(plan):
                group_start = time.perf_counter()
                current = _build_group(names, params, layer_masks, bests, target, gain)
                _run_group(current, solver, steps, lr, gain2, tol, bar, refresh, index, len(plan))
                current.write_back()
                steps_taken.update(zip(current.names, current.steps.tolist()))  # .tolist() waits for the device
                current = None
                elapsed = time.perf_counter() - group_start
                times.update((name, elapsed) for name in names)
    except KeyboardInterrupt:
        if current is not None:
            current.write_back()
        warnings.warn(
            "approximate_isometry was interrupted: the weights reached so far were written back (pruned entries "
            "are 0); layers not reached yet keep their pruned initial values",
            RuntimeWarning,
            stacklevel=2,
        )
        raise
    finally:
        bar.close()

    layers = {}
    with torch.no_grad():
        for name, p in params.items():
            c_out, fan_in, density, before, best = info[name]
            layers[name] = LayerIsometry(
                name=name,
                shape=tuple(p.shape),
                c_out=c_out,
                fan_in=fan_in,
                density=density,
                error_before=before,
                error_after=float(orthogonality_error(p, layer_masks.get(name), target=target, gain=gain)),
                best_possible=best,
                steps=int(steps_taken[name]),
                time_s=times[name],
            )
    return IsometryReport(
        layers=layers,
        solver=solver,
        target=target,
        gain=gain,
        steps=steps,
        lr=lr,
        tol=tol,
        time_s=time.perf_counter() - start,
    )


def _run_group(
    group: _Group,
    solver: str,
    steps: int,
    lr: float,
    gain2: float,
    tol: float | None,
    bar: Any,
    refresh: int,
    index: int,
    count: int,
) -> None:
    batch, k, wide = group.a.shape
    bar.set_description(f"approximate isometry {index + 1}/{count} [{k}x{wide}]x{batch}")
    active = torch.ones(batch, dtype=torch.bool, device=group.a.device)
    cg = _ConjugateGradient(group, gain2, tol) if solver == "cg" else None
    done = 0
    try:
        for step in range(steps):
            if cg is not None:
                err = cg.step(tol, active)
            else:
                err = _sgd_step(group, lr, gain2, tol, active)
            group.steps += active
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
