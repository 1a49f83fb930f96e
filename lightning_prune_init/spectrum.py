"""Jacobian singular values: of the weights, of each layer's Jacobian, and of the whole network.

Three scopes (METHOD.md §5), all keyed by *layer name* (the module name of a prunable parameter,
``"features.0"`` for ``"features.0.weight"``), except the end-to-end scope, keyed by
:data:`END_TO_END`:

``"weights"`` (data-free)
    Singular values of each prunable weight reshaped to ``[c_out, c_in·kh·kw]``: the matrix the
    approximate-isometry repair acts on. For a convolution this is only a proxy of the conv operator;
    :func:`conv_singular_values_fft` gives the operator's exact values under circular padding.
``"layerwise"``
    For each example, the Jacobian ``∂ x_next / ∂ x_l`` of the *input of the next prunable layer*
    with respect to the *input of this prunable layer*, computed through the model's real forward code
    (the input of layer ``l`` is replaced by a variable, everything not downstream of it is held fixed).
    "Next" is the first prunable layer, in execution order, whose input depends on this layer's input;
    the last such layer is paired with the model output. For an MLP ``x_l = φ(W_l x_{l-1} + b_l)``
    this is ``D_l W_l`` with ``D_l = diag(φ'(h_l))``. Layers with no downstream path are skipped.
``"end_to_end"``
    For each example, the Jacobian of the model output with respect to the model input (what the
    authors' code measures).

Methods:

``"exact"``
    The per-example Jacobian is formed with ``torch.func.vmap(jacrev)`` (or ``jacfwd`` when the
    input side is the smaller one), and ``torch.linalg.svdvals`` gives all ``min(m, n)`` values.
``"estimate"``
    Matrix-free, from products ``Jᵀu`` (the pullback of one recorded ``torch.func.vjp``) and ``Jv`` (the
    transpose of that pullback), on the Gram matrix of the smaller side:
    the largest value by power iteration, the mean squared value by Hutchinson's estimator
    (``E‖J v‖² = ‖J‖_F²`` with Rademacher probes; exact when the smaller side has at most
    ``num_probes`` dimensions), and, when ``lanczos_steps > 0``, the mean, standard deviation and
    smallest value by stochastic Lanczos quadrature. The largest value is then the larger of the power
    iteration and Lanczos estimates: both are Rayleigh quotients, so both are lower bounds of the true
    value. The Lanczos smallest value is an *upper* bound of the true smallest value (the condition
    number a lower bound); it is reliable for well separated spectra only and should be read as a trend.
    When the smaller side has at most ``lanczos_steps`` dimensions (e.g. the 10 logits of an end-to-end
    Jacobian), forming the Jacobian costs fewer products than the estimators: ``"estimate"`` then computes
    the exact values (and reports ``method="exact"``).
``"auto"``
    ``"exact"`` when ``min(m, n) <= max_exact_dim`` and ``m·n <= max_exact_numel``, else ``"estimate"``.

Statistics pool the singular values of all examples (as the official code does): ``mean``, ``std``,
``min``, ``max``, ``cond = max / min`` and ``mean_sq`` (mean squared singular value,
``‖J‖_F² / min(m, n)`` averaged over examples). Statistics an estimate cannot give are ``nan``.
The data-dependent scopes assume examples do not interact in ``eval()`` mode (true for the usual layers:
batch norm then uses its running statistics).

Nothing here changes the model or the training run: the model is run in ``eval()`` mode (each
module's mode is restored afterwards), under ``torch.no_grad()`` (``torch.func`` transforms still
differentiate with respect to their explicit inputs; no ``.grad`` is written, no graph over the
parameters is kept), and random probes come from a dedicated ``torch.Generator`` seeded with ``seed``
inside ``torch.random.fork_rng``, so the global RNG streams are untouched.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vjp, vmap

from lightning_prune_init.parameters import layer_name, prunable_parameters

__all__ = [
    "END_TO_END",
    "METHODS",
    "SCOPES",
    "SpectrumStats",
    "conv_singular_values_fft",
    "jacobian_singular_values",
]

#: Key of the end-to-end result in the dictionary returned by :func:`jacobian_singular_values`.
END_TO_END = "end_to_end"
#: Accepted values of ``scope``.
SCOPES: tuple[str, ...] = ("weights", "layerwise", "end_to_end")
#: Accepted values of ``method``.
METHODS: tuple[str, ...] = ("exact", "estimate", "auto")

ForwardFn = Callable[[nn.Module, Tensor], Tensor]


@dataclass(frozen=True)
class SpectrumStats:
    """Singular-value statistics of one Jacobian (or weight), pooled over examples.

    Attributes:
        mean, std, min, max: of the singular values (dimensionless gains), pooled over examples;
            ``nan`` where the method cannot give them (``estimate`` without Lanczos).
        cond: ``max / min`` (``inf`` when ``min == 0``); for ``estimate`` a lower bound.
        mean_sq: mean squared singular value, ``‖J‖_F² / min(m, n)`` averaged over examples.
        method: ``"exact"`` or ``"estimate"``, the method actually used.
        shape: ``(m, n)`` of one example's Jacobian (output size, input size), or of the reshaped weight.
        num_examples: number of examples pooled (1 for the weights scope).
        values: exact only: ``[num_examples, min(m, n)]`` float32 CPU tensor, each row sorted in
            descending order; ``None`` for estimates.
    """

    mean: float
    std: float
    min: float
    max: float
    cond: float
    mean_sq: float
    method: str
    shape: tuple[int, int]
    num_examples: int
    values: Tensor | None = field(default=None, repr=False, compare=False)

    def scalars(self) -> dict[str, float]:
        """The finite scalar statistics by name (``mean, std, min, max, cond, mean_sq``)."""
        out = {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "cond": self.cond,
            "mean_sq": self.mean_sq,
        }
        return {k: v for k, v in out.items() if math.isfinite(v)}


# --------------------------------------------------------------------------------------------------
# Linear operators: a batch of B independent m x n matrices, applied to [B, n] / [B, m] vectors.
# --------------------------------------------------------------------------------------------------


class _BatchedOperator:
    """A batch of ``B`` matrices of shape ``[m, n]`` known through products only."""

    batch: int
    m: int
    n: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor:  # [B, n] -> [B, m]
        raise NotImplementedError

    def rmatvec(self, u: Tensor) -> Tensor:  # [B, m] -> [B, n]
        raise NotImplementedError

    def dense(self, index: slice) -> Tensor:  # -> [b, m, n] for the examples in ``index``
        raise NotImplementedError


class _MatrixOperator(_BatchedOperator):
    def __init__(self, matrix: Tensor) -> None:
        self.a = matrix.unsqueeze(0)  # [1, m, n]
        self.batch, self.m, self.n = self.a.shape
        self.dtype, self.device = matrix.dtype, matrix.device

    def matvec(self, v: Tensor) -> Tensor:
        return torch.bmm(self.a, v.unsqueeze(-1)).squeeze(-1)

    def rmatvec(self, u: Tensor) -> Tensor:
        return torch.bmm(self.a.transpose(1, 2), u.unsqueeze(-1)).squeeze(-1)

    def dense(self, index: slice) -> Tensor:
        return self.a[index]


class _JacobianOperator(_BatchedOperator):
    """Per-example Jacobians of ``fn(P, C) -> Y`` with respect to ``P``, at ``primals``.

    ``fn`` is batched (leading dimension ``B`` on ``P``, ``C`` and ``Y``) and examples must not interact
    (true in ``eval()`` mode for the usual layers); ``context`` is held fixed. Dense Jacobians are taken per
    example under ``vmap``. Products linearize once: one vjp records the graph from ``P`` to ``Y`` (only the
    part downstream of ``P``; what does not depend on ``P`` is not recomputed), its pullback gives ``Jᵀu``
    and the transpose of the pullback (the vjp of a linear map) gives ``Jv``. (A forward-mode jvp would
    recompute everything upstream of ``P`` at every product; measured slower on VGG.)
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor | None], Tensor],
        primals: Tensor,
        context: Tensor | None,
        out_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.fn, self.primals, self.context = fn, primals, context
        self.in_shape = primals.shape[1:]
        self.batch = primals.shape[0]
        self.dtype, self.device = primals.dtype, primals.device
        self._ctx_dim = None if context is None else 0
        self._pullback: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        self._pushforward: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        if out_shape is None:
            out_shape = tuple(self._one(primals[0], None if context is None else context[0]).shape)
        self.out_shape = torch.Size(out_shape)
        self.m, self.n = math.prod(self.out_shape), math.prod(self.in_shape)

    def _one(self, p: Tensor, c: Tensor | None) -> Tensor:
        return self.fn(p.unsqueeze(0), None if c is None else c.unsqueeze(0))[0]

    def _linearize(self) -> None:
        out, pullback = vjp(lambda q: self.fn(q, self.context), self.primals)
        if tuple(out.shape) != (self.batch, *self.out_shape):
            raise ValueError(
                f"the batched output has shape {tuple(out.shape)}, expected {(self.batch, *self.out_shape)}: "
                "the first output dimension must be the batch"
            )
        _, pushforward = vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
        self._pullback, self._pushforward = pullback, pushforward

    def matvec(self, v: Tensor) -> Tensor:
        if self._pushforward is None:
            self._linearize()
        assert self._pushforward is not None
        return self._pushforward(v.to(self.dtype).reshape(self.batch, *self.in_shape))[0].reshape(self.batch, -1)

    def rmatvec(self, u: Tensor) -> Tensor:
        if self._pullback is None:
            self._linearize()
        assert self._pullback is not None
        return self._pullback(u.to(self.dtype).reshape(self.batch, *self.out_shape))[0].reshape(self.batch, -1)

    def dense(self, index: slice) -> Tensor:
        jac = jacfwd if self.n < self.m else jacrev

        def one(p: Tensor, c: Tensor | None) -> Tensor:
            return jac(lambda q: self._one(q, c))(p).reshape(self.m, self.n)

        ctx = None if self.context is None else self.context[index]
        return vmap(one, in_dims=(0, self._ctx_dim))(self.primals[index], ctx)


# --------------------------------------------------------------------------------------------------
# Exact values and estimators
# --------------------------------------------------------------------------------------------------


def _exact_values(op: _BatchedOperator, max_chunk_numel: int) -> Tensor:
    """All singular values, ``[B, min(m, n)]`` float32 on CPU, rows sorted descending."""
    per_example = max(op.m * op.n, 1)
    chunk = max(1, max_chunk_numel // per_example)
    rows = []
    for start in range(0, op.batch, chunk):
        jac = op.dense(slice(start, start + chunk))
        rows.append(torch.linalg.svdvals(jac))
    return torch.cat(rows).float().cpu()


class _Gram:
    """``A Aᵀ`` (when ``m <= n``) or ``Aᵀ A``: the Gram matrix of the smaller side, dimension ``d``."""

    def __init__(self, op: _BatchedOperator) -> None:
        self.op = op
        self.left = op.m <= op.n
        self.d = op.m if self.left else op.n

    def __call__(self, x: Tensor) -> Tensor:  # [B, d] float64 -> [B, d] float64
        op = self.op
        y = op.matvec(op.rmatvec(x.to(op.dtype))) if self.left else op.rmatvec(op.matvec(x.to(op.dtype)))
        return y.to(torch.float64)

    def one_sided_sq_norm(self, x: Tensor) -> Tensor:  # ‖Aᵀx‖² or ‖Ax‖², [B]
        op = self.op
        y = op.rmatvec(x.to(op.dtype)) if self.left else op.matvec(x.to(op.dtype))
        return y.to(torch.float64).pow(2).sum(-1)


def _rademacher(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return bits.to(device=device, dtype=torch.float64) * 2 - 1


def _power_iteration(gram: _Gram, steps: int, generator: torch.Generator) -> Tensor:
    """Largest eigenvalue of each Gram matrix (``σ_max²``), ``[B]``; a Rayleigh quotient, so a lower bound."""
    op = gram.op
    v = torch.randn((op.batch, gram.d), generator=generator, device=generator.device, dtype=torch.float64)
    v = v.to(op.device)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    rayleigh = torch.zeros(op.batch, dtype=torch.float64, device=op.device)
    for _ in range(max(steps, 1)):
        w = gram(v)
        rayleigh = torch.maximum(rayleigh, (v * w).sum(-1))
        norm = w.norm(dim=-1, keepdim=True)
        if bool((norm == 0).all()):
            break
        v = torch.where(norm > 0, w / norm.clamp_min(1e-300), v)
    return rayleigh


def _hutchinson(gram: _Gram, num_probes: int, generator: torch.Generator) -> Tensor:
    """``‖J‖_F²`` of each matrix, ``[B]``: exact (basis vectors) when ``d <= num_probes``, else Hutchinson."""
    op = gram.op
    if gram.d <= num_probes:
        eye = torch.eye(gram.d, dtype=torch.float64, device=op.device)
        return sum(gram.one_sided_sq_norm(eye[i].expand(op.batch, -1)) for i in range(gram.d))
    total = torch.zeros(op.batch, dtype=torch.float64, device=op.device)
    for _ in range(num_probes):
        total += gram.one_sided_sq_norm(_rademacher((op.batch, gram.d), generator, op.device))
    return total / num_probes


@dataclass
class _LanczosResult:
    ritz: Tensor  # [B, k] Ritz values (eigenvalue estimates of the Gram matrix)
    weights: Tensor  # [B, k] quadrature weights, summing to 1 per row


def _lanczos(gram: _Gram, steps: int, generator: torch.Generator) -> _LanczosResult:
    """Lanczos with full reorthogonalization from a Rademacher start (stochastic Lanczos quadrature).

    With ``q₁ = v/‖v‖``, ``Σ_j weights_j f(ritz_j)`` estimates ``tr f(G) / d``. On breakdown
    (an invariant subspace found) the iteration restarts from a random vector orthogonal to the basis,
    which keeps the quadrature of ``q₁`` exact and the Ritz values within the spectrum.
    """
    op = gram.op
    b, d = op.batch, gram.d
    k = min(steps, d)
    q = _rademacher((b, d), generator, op.device)
    q = q / q.norm(dim=-1, keepdim=True)
    basis = torch.zeros((k, b, d), dtype=torch.float64, device=op.device)
    alpha = torch.zeros((b, k), dtype=torch.float64, device=op.device)
    beta = torch.zeros((b, k), dtype=torch.float64, device=op.device)
    scale: Tensor | None = None
    tolerance = 10 * torch.finfo(op.dtype).eps  # relative size of a residual that is rounding noise
    for j in range(k):
        basis[j] = q
        w = gram(q)
        alpha[:, j] = (q * w).sum(-1)
        if scale is None:
            scale = alpha[:, 0].abs().clamp_min(1e-300)
        for _ in range(2):  # full reorthogonalization, twice
            coeffs = torch.einsum("jbd,bd->jb", basis[: j + 1], w)
            w = w - torch.einsum("jb,jbd->bd", coeffs, basis[: j + 1])
        if j == k - 1:
            break
        norm = w.norm(dim=-1)
        broken = norm <= tolerance * scale + 1e-300
        if bool(broken.any()):
            fresh = torch.randn((b, d), generator=generator, device=generator.device, dtype=torch.float64).to(op.device)
            for _ in range(2):
                coeffs = torch.einsum("jbd,bd->jb", basis[: j + 1], fresh)
                fresh = fresh - torch.einsum("jb,jbd->bd", coeffs, basis[: j + 1])
            fresh = fresh / fresh.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            norm = torch.where(broken, torch.zeros_like(norm), norm)
            q = torch.where(broken[:, None], fresh, w / norm.clamp_min(1e-300)[:, None])
        else:
            q = w / norm[:, None]
        beta[:, j] = norm
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, : k - 1], 1) + torch.diag_embed(beta[:, : k - 1], -1)
    ritz, vecs = torch.linalg.eigh(tri)
    return _LanczosResult(ritz=ritz.clamp_min(0), weights=vecs[:, 0, :].pow(2))


def _stats_from_values(values: Tensor, shape: tuple[int, int]) -> SpectrumStats:
    flat = values.double().flatten()
    vmin, vmax = float(flat.min()), float(flat.max())
    return SpectrumStats(
        mean=float(flat.mean()),
        std=float(flat.std(unbiased=False)),
        min=vmin,
        max=vmax,
        cond=vmax / vmin if vmin > 0 else math.inf,
        mean_sq=float(flat.pow(2).mean()),
        method="exact",
        shape=shape,
        num_examples=values.shape[0],
        values=values,
    )


def _estimate_stats(
    op: _BatchedOperator,
    *,
    power_iters: int,
    num_probes: int,
    lanczos_steps: int,
    lanczos_probes: int,
    generator: torch.Generator,
) -> SpectrumStats:
    gram = _Gram(op)
    k = min(op.m, op.n)
    lam_max = _power_iteration(gram, power_iters, generator)
    mean_sq = float((_hutchinson(gram, num_probes, generator) / k).mean())
    mean = std = vmin = math.nan
    if lanczos_steps > 0:
        means, second, mins = [], [], []
        full = lanczos_steps >= gram.d  # the Krylov basis spans everything: Ritz values are the spectrum
        for _ in range(1 if full else lanczos_probes):
            res = _lanczos(gram, lanczos_steps, generator)
            if full:
                res.weights = torch.full_like(res.weights, 1.0 / gram.d)
                mean_sq = float((res.ritz.sum(-1) / k).mean())
            means.append((res.weights * res.ritz.sqrt()).sum(-1))
            second.append((res.weights * res.ritz).sum(-1))
            mins.append(res.ritz[:, 0])
            lam_max = torch.maximum(lam_max, res.ritz[:, -1])
        mean = float(torch.stack(means).mean())
        std = math.sqrt(max(float(torch.stack(second).mean()) - mean**2, 0.0))
        vmin = math.sqrt(max(float(torch.stack(mins).min()), 0.0))
    vmax = math.sqrt(max(float(lam_max.max()), 0.0))
    cond = (vmax / vmin if vmin > 0 else math.inf) if math.isfinite(vmin) else math.nan
    return SpectrumStats(
        mean=mean,
        std=std,
        min=vmin,
        max=vmax,
        cond=cond,
        mean_sq=mean_sq,
        method="estimate",
        shape=(op.m, op.n),
        num_examples=op.batch,
        values=None,
    )


def conv_singular_values_fft(weight: Tensor, input_size: Sequence[int]) -> Tensor:
    """Exact singular values of a 2-D convolution operator with circular padding (Sedghi et al. 2019).

    The operator maps ``[c_in, h, w] -> [c_out, h, w]`` (stride 1, dilation 1, groups 1, circular padding
    of any amount; the padding only shifts the output, which does not change singular values). Its
    singular values are those of the ``h·w`` matrices ``Σ_{p,q} K[:, :, p, q] e^{-2πi(pu/h + qv/w)}``.

    Args:
        weight: ``[c_out, c_in, kh, kw]`` kernel.
        input_size: ``(h, w)``, each at least the kernel size.

    Returns:
        ``[h·w·min(c_out, c_in)]`` float tensor, sorted in descending order.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(getattr(weight, "shape", ()))
        raise ValueError(f"`weight` must be a [c_out, c_in, kh, kw] tensor, got shape {shape}")
    h, w = (int(s) for s in input_size)
    kh, kw = weight.shape[-2:]
    if h < kh or w < kw:
        raise ValueError(f"`input_size` {(h, w)} must be at least the kernel size {(kh, kw)}")
    transfer = torch.fft.fft2(weight.detach().double(), s=(h, w), dim=(-2, -1)).permute(2, 3, 0, 1)
    values = torch.linalg.svdvals(transfer).flatten()
    return values.sort(descending=True).values.to(weight.dtype)


# --------------------------------------------------------------------------------------------------
# Model plumbing: prunable layers, their inputs, and the layerwise functions
# --------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    pass


def _default_forward(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


def _call(forward_fn: ForwardFn, model: nn.Module, x: Tensor) -> Tensor:
    out = forward_fn(model, x)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model output must be a tensor to take its Jacobian, got {type(out).__name__}; "
            "pass `forward_fn=lambda model, x: ...` returning the tensor to analyse"
        )
    return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _hooks(handles: list[Any]) -> Iterator[list[Any]]:
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def _replace_first_arg(args: tuple[Any, ...], value: Tensor) -> tuple[Any, ...]:
    return (value,) + tuple(args[1:])


def _prunable_layers(
    model: nn.Module, include: str | Sequence[str] | None, exclude: str | Sequence[str] | None
) -> dict[str, tuple[str, Tensor]]:
    """``{layer name: (parameter name, parameter)}`` for prunable parameters with at least 2 dims."""
    layers: dict[str, tuple[str, Tensor]] = {}
    for pname, p in prunable_parameters(model, include=include, exclude=exclude).items():
        if p.dim() < 2:
            continue
        key = layer_name(pname) if pname.endswith(".weight") else pname
        layers.setdefault(key, (pname, p))
    return layers


def _select(names: Sequence[str], layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        return list(names)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"`layers` must be a glob pattern or a list of them, got an element {pattern!r}")
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(f"`layers` pattern {pattern!r} matches no prunable layer; layers are: {', '.join(names)}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _module_of(model: nn.Module, key: str) -> nn.Module:
    try:
        return model.get_submodule(key) if key else model
    except AttributeError:
        return model  # a custom include on a non-module parameter: handled by the caller


def _trace_inputs(
    model: nn.Module, forward_fn: ForwardFn, inputs: Tensor, modules: dict[str, nn.Module]
) -> tuple[list[str], dict[str, Tensor], tuple[int, ...]]:
    """Run the model once: modules in execution order, their first-call inputs, the output's shape."""
    order: list[str] = []
    captured: dict[str, Tensor] = {}

    def make(key: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if key not in captured and args and isinstance(args[0], Tensor):
                captured[key] = args[0].detach().clone()
                order.append(key)

        return hook

    with _hooks([m.register_forward_pre_hook(make(k)) for k, m in modules.items()]):
        out = _call(forward_fn, model, inputs)
    return order, captured, tuple(out.shape)


def _layerwise_pairs(
    model: nn.Module,
    forward_fn: ForwardFn,
    x: Tensor,
    order: list[str],
    modules: dict[str, nn.Module],
    wanted: list[str],
) -> dict[str, str | None]:
    """For each wanted layer, the first later layer whose input depends on its input (``None``: the output).

    One forward in which the input of every prunable layer is replaced by a fresh leaf: the input of a later
    layer ``k`` depends on the leaf of ``l`` iff a path joins them without crossing another prunable layer's
    input. The first dependent layer in execution order always has such a path (whatever feeds it from ``l``
    through another layer ``j`` makes ``j`` dependent and earlier), so this finds the same "next" layer as a
    search over all paths. Layers with no path to any later layer nor to the output are left out.
    """
    leaves: dict[str, Tensor] = {}
    seen: dict[str, Tensor] = {}

    def make(key: str) -> Callable[..., tuple[Any, ...] | None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if key in leaves or not args or not isinstance(args[0], Tensor):
                return None
            seen[key] = args[0]
            leaf = args[0].detach().requires_grad_(True)
            leaves[key] = leaf
            return _replace_first_arg(args, leaf)

        return hook

    with _hooks([modules[k].register_forward_pre_hook(make(k)) for k in order]), torch.enable_grad():
        out = _call(forward_fn, model, x)
        keys = [k for k in order if k in leaves]
        inputs = [leaves[k] for k in keys]

        def depends_on(target: Tensor) -> set[str]:
            if not target.requires_grad:
                return set()
            grads = torch.autograd.grad(target.sum(), inputs, allow_unused=True, retain_graph=True)
            return {k for k, g in zip(keys, grads) if g is not None}

        deps = {k: depends_on(seen[k]) for k in keys}
        out_deps = depends_on(out)
    pairs: dict[str, str | None] = {}
    for i, key in enumerate(keys):
        if key not in wanted:
            continue
        nxt = next((k for k in keys[i + 1 :] if key in deps[k]), False)
        if nxt is False and key in out_deps:
            nxt = None
        if nxt is not False:
            pairs[key] = nxt  # type: ignore[assignment]
    return pairs


def _layerwise_fn(
    model: nn.Module, forward_fn: ForwardFn, layer: nn.Module, nxt: nn.Module | None
) -> Callable[[Tensor, Tensor | None], Tensor]:
    """``fn(Z, X)``, batched: the next layer's input (or the output) when ``layer``'s input is ``Z``."""

    def fn(z: Tensor, x: Tensor | None) -> Tensor:
        assert x is not None
        state = {"replaced": False}
        captured: list[Tensor] = []

        def replace(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if state["replaced"]:
                return None
            state["replaced"] = True
            return _replace_first_arg(args, z)

        def capture(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if state["replaced"] and not captured:
                captured.append(args[0])
                raise _StopForward

        handles = [layer.register_forward_pre_hook(replace)]
        if nxt is not None:
            handles.append(nxt.register_forward_pre_hook(capture))
        with _hooks(handles):
            try:
                out = _call(forward_fn, model, x)
            except _StopForward:
                return captured[0]
        return out

    return fn


def _end_to_end_fn(model: nn.Module, forward_fn: ForwardFn) -> Callable[[Tensor, Tensor | None], Tensor]:
    def fn(x: Tensor, _context: Tensor | None) -> Tensor:
        return _call(forward_fn, model, x)

    return fn


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def jacobian_singular_values(
    model: nn.Module,
    inputs: Tensor | None = None,
    *,
    scope: str = "layerwise",
    method: str = "auto",
    layers: str | Sequence[str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    forward_fn: ForwardFn | None = None,
    max_exact_dim: int = 128,
    max_exact_numel: int = 2**22,
    power_iters: int = 10,
    num_probes: int = 4,
    lanczos_steps: int = 20,
    lanczos_probes: int = 1,
    seed: int = 0,
) -> dict[str, SpectrumStats]:
    """Singular-value statistics of the weights, the layer Jacobians or the end-to-end Jacobian.

    Args:
        model: the network. Its forward is ``forward_fn(model, x)`` (default ``model(x)``) and must
            return a tensor whose first dimension is the batch.
        inputs: ``[B, ...]`` batch of examples (the probe); required for ``"layerwise"`` and
            ``"end_to_end"``, ignored for ``"weights"``. Examples must not interact in ``eval()`` mode.
        scope: ``"weights"``, ``"layerwise"`` (default) or ``"end_to_end"`` (see the module docstring).
        method: ``"exact"``, ``"estimate"`` or ``"auto"`` (default).
        layers: glob pattern(s) on layer names selecting which layers to report (default: all prunable
            layers). The layerwise "next layer" is still searched among all prunable layers.
        include, exclude: passed to :func:`~lightning_prune_init.parameters.prunable_parameters`
            (patterns on parameter names) to define the prunable layers.
        forward_fn: ``(model, x) -> output tensor``; default ``model(x)``.
        max_exact_dim: ``"auto"`` uses ``"exact"`` when ``min(m, n) <= max_exact_dim`` ...
        max_exact_numel: ... and ``m·n <= max_exact_numel`` (elements of one example's Jacobian).
            Also the memory budget (in elements) of one chunk of dense Jacobians.
        power_iters: power-iteration steps for the largest value (estimate); default 10. Each step
            costs one product with ``J`` and one with ``Jᵀ``. With Lanczos on, the reported maximum is the
            larger of the two estimates (Lanczos' is usually the better one for the same cost).
        num_probes: Rademacher probes per example for Hutchinson's ``mean_sq`` (estimate); default 4,
            one product each.
        lanczos_steps: Lanczos steps per probe (estimate); ``0`` turns Lanczos off (then ``mean``,
            ``std``, ``min`` and ``cond`` are ``nan``); default 20, one jvp and one vjp each. When it
            reaches the smaller Jacobian dimension, the Lanczos values are the exact spectrum.
        lanczos_probes: Lanczos start vectors per example; default 1 (the statistics are pooled over
            examples, which act as further probes).
        seed: seed of the dedicated generator of the random probes.

    Returns:
        ``{layer name: SpectrumStats}`` in execution order (``"weights"``: parameter order), or
        ``{END_TO_END: SpectrumStats}``.

    Raises:
        ValueError: unknown ``scope``/``method``, missing ``inputs``, bad sizes, a ``layers`` pattern
            that matches nothing.
        TypeError: ``model`` is not a module, ``inputs`` not a tensor, the output not a tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    for arg, value, low in (
        ("max_exact_dim", max_exact_dim, 0),
        ("max_exact_numel", max_exact_numel, 1),
        ("power_iters", power_iters, 1),
        ("num_probes", num_probes, 1),
        ("lanczos_steps", lanczos_steps, 0),
        ("lanczos_probes", lanczos_probes, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{arg}` must be an integer >= {low}, got {value!r}")
    if scope != "weights":
        if not isinstance(inputs, Tensor):
            raise TypeError(
                f"`inputs` must be a [B, ...] tensor for scope={scope!r}, got {type(inputs).__name__}"
            )
        if inputs.dim() < 1 or inputs.shape[0] < 1:
            raise ValueError(f"`inputs` must have a non-empty batch dimension, got shape {tuple(inputs.shape)}")
    forward = forward_fn or _default_forward
    estimate_kwargs = {
        "power_iters": power_iters,
        "num_probes": num_probes,
        "lanczos_steps": lanczos_steps,
        "lanczos_probes": lanczos_probes,
    }

    def choose(m: int, n: int) -> str:
        if method != "auto":
            return method
        return "exact" if min(m, n) <= max_exact_dim and m * n <= max_exact_numel else "estimate"

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(inputs, Tensor):
        device = inputs.device
    fork_devices = [device] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=fork_devices), torch.no_grad(), _eval_mode(model):
        generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)

        def compute(op: _BatchedOperator) -> SpectrumStats:
            small_side = min(op.m, op.n) <= max(lanczos_steps, 1) and op.m * op.n <= max_exact_numel
            if choose(op.m, op.n) == "exact" or small_side:
                return _stats_from_values(_exact_values(op, max_exact_numel), (op.m, op.n))
            return _estimate_stats(op, generator=generator, **estimate_kwargs)

        if scope == "end_to_end":
            return {END_TO_END: compute(_JacobianOperator(_end_to_end_fn(model, forward), inputs, None))}

        prunable = _prunable_layers(model, include, exclude)
        wanted = _select(list(prunable), layers)

        if scope == "weights":
            results = {}
            for key in wanted:
                w = prunable[key][1].detach()
                results[key] = compute(_MatrixOperator(w.reshape(w.shape[0], -1)))
            return results

        assert isinstance(inputs, Tensor)
        modules = {k: _module_of(model, k) for k in prunable}
        modules = {k: m for k, m in modules.items() if m is not model}
        order, base, out_shape = _trace_inputs(model, forward, inputs, modules)
        pairs = _layerwise_pairs(model, forward, inputs[:1], order, modules, wanted)
        results = {}
        for key, nxt in pairs.items():
            fn = _layerwise_fn(model, forward, modules[key], None if nxt is None else modules[nxt])
            next_shape = out_shape if nxt is None else tuple(base[nxt].shape)
            results[key] = compute(_JacobianOperator(fn, base[key], inputs, next_shape[1:]))
        return results
