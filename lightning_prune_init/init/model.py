"""One scheme for a whole model: :func:`init_model_` writes the tensors of the parameter selection, nothing else.

The tensors are those of :func:`~lightning_prune_init.parameters.select_parameters` (the one selection every
stage honours), each initialized per matrix of its layout (:func:`init_tensor_`). Rules for what is not a
matrix, and what is written besides the selection:

* a selected tensor of fewer than 2 dimensions registered as a ``bias`` (or ``in_proj_bias``) is set to zero,
  as the papers initialize biases; any other selected 1-D tensor (a normalization gain named by the user) is
  left as it is, with a warning: no scheme defines it, and zero would switch its layer off;
* ``zero_biases=True`` also zeroes the bias of each selected weight's module (the papers' setting), even when
  that bias is not selected; by default (``False``) every tensor outside the selection stays bit-identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_bool, check_choice, check_generator, check_number
from lightning_prune_init.init._tensors import check_gain
from lightning_prune_init.init.orthogonal import delta_orthogonal_, orthogonal_
from lightning_prune_init.init.variance_scaling import variance_scaling_
from lightning_prune_init.layouts import MatrixLayout
from lightning_prune_init.parameters import ParameterSelection, as_selection

__all__ = ["SCHEMES", "init_model_", "init_tensor_"]

#: Accepted values of ``init_model_(scheme=...)`` and ``init_tensor_(scheme=...)``.
SCHEMES: tuple[str, ...] = ("orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he")

_BIASES = ("bias", "in_proj_bias")
#: the bias that belongs to a weight attribute (``nn.MultiheadAttention`` keeps one for its q/k/v projections)
_BIAS_OF = {"weight": "bias", "in_proj_weight": "in_proj_bias", "q_proj_weight": "in_proj_bias",
            "k_proj_weight": "in_proj_bias", "v_proj_weight": "in_proj_bias"}


def _check_scheme(scheme: str, gamma: float) -> float:
    check_choice("scheme", scheme, SCHEMES)
    gamma = check_number("gamma", gamma, minimum=0.0, minimum_inclusive=False)
    if scheme in ("orthogonal", "delta-orthogonal") and gamma != 1.0:
        raise ValueError(
            f"`gamma` is the variance multiplier of the 'vs-*' schemes; scheme {scheme!r} takes `gain` instead "
            f"(got gamma={gamma})"
        )
    return gamma


@torch.no_grad()
def init_tensor_(
    tensor: Tensor,
    scheme: str = "orthogonal",
    gain: float = 1.0,
    *,
    gamma: float = 1.0,
    layout: MatrixLayout | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill one weight in place with ``scheme``, per matrix of ``layout``; returns ``tensor``.

    ``"orthogonal"``: :func:`~lightning_prune_init.init.orthogonal_` (block-orthogonal convs);
    ``"delta-orthogonal"``: :func:`~lightning_prune_init.init.delta_orthogonal_`; ``"vs-lecun"``, ``"vs-glorot"``,
    ``"vs-he"``: :func:`~lightning_prune_init.init.variance_scaling_` with variance multiplier ``gamma · gain²``.

    Args:
        tensor: a floating-point weight with at least 2 dimensions.
        scheme: one of :data:`SCHEMES` (default ``"orthogonal"``).
        gain: scale (> 0, default 1): multiplies orthogonal weights and the standard deviation of Gaussian ones.
        gamma: variance multiplier of the ``vs-*`` schemes (> 0, default 1); must stay 1 for the orthogonal ones.
        layout: how ``tensor`` reads as matrices (default: ``[out, in]``, or a ``groups=1`` conv for 3+ dims).
        generator: source of randomness (``torch.Generator``).

    >>> w = init_tensor_(torch.empty(3, 5), "orthogonal", generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
    True
    """
    gamma = _check_scheme(scheme, gamma)
    gain = check_gain(gain)
    if scheme == "orthogonal":
        return orthogonal_(tensor, gain, layout=layout, generator=generator)
    if scheme == "delta-orthogonal":
        return delta_orthogonal_(tensor, gain, layout=layout, generator=generator)
    return variance_scaling_(tensor, scheme[3:], gamma * gain**2, layout=layout, generator=generator)


def is_bias(names: Sequence[str]) -> bool:
    """Whether a tensor known under ``names`` is registered as a ``bias`` or ``in_proj_bias``.

    >>> is_bias(["encoder.attn.in_proj_bias"]), is_bias(["norm.weight"])
    (True, False)
    """
    return any(n.rpartition(".")[2] in _BIASES for n in names)


def _biases_of(model: nn.Module, names: Sequence[str]) -> Iterator[nn.Parameter]:
    """The bias of each module that owns the weight known under ``names``."""
    for name in names:
        module_name, _, attr = name.rpartition(".")
        bias = getattr(model.get_submodule(module_name), _BIAS_OF.get(attr, ""), None)
        if isinstance(bias, nn.Parameter):
            yield bias


@torch.no_grad()
def init_model_(
    model: nn.Module,
    scheme: str = "orthogonal",
    gain: float = 1.0,
    *,
    gamma: float = 1.0,
    parameters: ParameterSelection | str | Sequence[str] | None = None,
    zero_biases: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-initialize the selected weights of ``model`` with one scheme, per matrix of each weight's layout.

    Only the tensors of the selection are written (module docstring for 1-D tensors and ``zero_biases``), in
    selection order, each once (a tied tensor under its first name). Every tensor is checked before any is
    written; the only refusal left is a selected tensor that is not floating point. Parameters keep their
    identity (written in place).

    Args:
        model: the module to initialize.
        scheme: one of :data:`SCHEMES`: ``"orthogonal"`` (matrices: Haar orthogonal; convs: block-orthogonal per
            group, the SPP authors' choice; default), ``"delta-orthogonal"`` (convs: orthogonal centre tap per
            group), ``"vs-lecun"``, ``"vs-glorot"``, ``"vs-he"`` (Gaussians, fans per matrix).
        gain: scale of the weights (> 0, default 1): multiplies orthogonal weights, and the standard deviation
            of variance-scaling ones (variance times ``gain**2``).
        gamma: variance multiplier γ of the variance-scaling schemes (> 0, default 1); must stay 1 for the
            orthogonal schemes.
        parameters: the tensors to write: a :class:`~lightning_prune_init.parameters.ParameterSelection` made on
            ``model``, a glob pattern or list of them (``include``), or ``None`` (default rule: the weights of
            Linear, Conv1d/2d/3d, transformers Conv1D and attention input projections).
        zero_biases: also set to zero the bias of each selected weight's module (default False; the papers'
            networks start with zero biases: pass True to reproduce them).
        generator: source of randomness (``torch.Generator``); tensors are drawn in selection order.

    Returns:
        ``model``.

    Raises:
        ValueError: unknown ``scheme``, ``gain``/``gamma`` not > 0, ``gamma != 1`` with an orthogonal scheme, or
            what :func:`~lightning_prune_init.parameters.select_parameters` raises.
        TypeError: ``model`` not a module, or a selected tensor that is not floating point.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 4, 1), torch.nn.Flatten())
    >>> bias = net[1].bias.detach().clone()
    >>> _ = init_model_(net, "delta-orthogonal", parameters=["0.weight", "1.weight"])
    >>> net[0].weight[:, 0, 1, 1].detach().abs().tolist() == [1.0] * 8, torch.equal(net[1].bias, bias)
    (True, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    gamma = _check_scheme(scheme, gamma)
    gain = check_gain(gain)
    check_bool("zero_biases", zero_biases)
    check_generator("generator", generator)
    selection = as_selection(model, parameters)
    for name, entry in selection.entries.items():
        p = selection[name]
        if not p.is_floating_point():
            raise TypeError(
                f"init_model_: parameter {name!r} is not floating point ({p.dtype}); leave it out of `parameters`"
            )
        if entry.layout.is_matrix:
            entry.layout.matrix_shape(p.shape)

    left_as_is = []
    for name, entry in selection.entries.items():
        p = selection[name]
        if entry.layout.is_matrix:
            init_tensor_(p, scheme, gain, gamma=gamma, layout=entry.layout, generator=generator)
            if zero_biases:
                for bias in _biases_of(model, entry.names):
                    if bias is not p:
                        bias.zero_()
        elif is_bias(entry.names):
            p.zero_()
        else:
            left_as_is.append(name)
    if left_as_is:
        warnings.warn(
            f"init_model_: {', '.join(left_as_is)} left as they are: they have fewer than 2 dimensions and are not "
            "biases, and no initialization scheme defines them (zero would switch their layers off)",
            UserWarning,
            stacklevel=2,
        )
    return model
