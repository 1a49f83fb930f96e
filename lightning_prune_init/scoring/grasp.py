"""Gradient signal preservation (GraSP, Wang et al. 2020): the ``"grasp"`` criterion, by double backprop.

``S = −θ ⊙ Hg`` with ``g = ∂L/∂θ`` and ``Hg`` the Hessian-gradient product; GraSP *removes* the largest ``S``.
Returned: ``max(S) − S = θ⊙Hg − min(θ⊙Hg)`` (float64), so "keep the highest score" is GraSP's rule. The shift is
monotone; two values of ``θ⊙Hg`` closer than float64's resolution at the scale of ``|min|`` become equal (then
ties are broken by position, as always). Attention runs through the math SDPA kernel while scoring, the only
one with a second derivative (:func:`~lightning_prune_init.scoring.guards.second_order`).

>>> import torch
>>> from lightning_prune_init.parameters import select_parameters
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
>>> batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
>>> scores = grasp(net, [batch], select_parameters(net), ScoringContext(options={"temperature": 1.0}))
>>> min(float(s.min()) for s in scores.values()), scores["0.weight"].dtype
(0.0, torch.float64)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init._validation import check_number
from lightning_prune_init.parameters import ParameterSelection
from lightning_prune_init.scoring.context import ScoringContext
from lightning_prune_init.scoring.guards import check_twice_differentiable, scoring_session, second_order
from lightning_prune_init.scoring.losses import check_loss_value
from lightning_prune_init.scoring.registry import check_criterion_options, register_criterion
from lightning_prune_init.scoring.snip import batch_list

__all__ = ["grasp"]


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    options["temperature"] = check_number("temperature", options["temperature"], minimum=0.0, minimum_inclusive=False)
    return options


def _check_finite(values: list[Tensor], names: list[str]) -> None:
    bad = [n for n, t in zip(names, values) if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"non-finite grasp scores for {', '.join(bad)}: check the loss, the inputs and the temperature")


@register_criterion("grasp", second_order=True, options={"temperature": 200.0}, check_options=_check_options)
def grasp(
    model: nn.Module, batches: Iterable[Any] | Tensor, parameters: ParameterSelection, context: ScoringContext
) -> dict[str, Tensor]:
    """GraSP scores ``θ⊙Hg − min(θ⊙Hg)``, i.e. ``max(S) − S`` with ``S = −θ⊙Hg`` (module docstring).

    ``g = Σ_b ∂L_b/∂θ`` (summed over batches, then over ranks by ``context.reduce_fn``), and
    ``Hg = Σ_b ∂(gᵀ ∂L_b/∂θ)/∂θ`` by double backprop with ``g`` held constant; ``θ`` and ``H`` are restricted to
    the selected tensors, as in the authors' code (weights of conv and linear layers). ``L_b`` is the context's
    loss with its logits divided by the option ``temperature`` (default 200, the authors' ``T``) wherever the
    package reads the logits; a ``loss_fn`` and a model's own ``.loss`` (dict batches with labels) are used as they
    are. The signed sums ``Σ_b θ⊙H_b g`` are reduced over ranks before the shift. The model runs in eval mode (the
    authors' code scores in train mode, batch statistics in batch norm; this package scores every criterion with
    running statistics). The context's selection settings and generator are not used.

    Returns:
        ``{name: float64 scores}``, min 0.

    Raises:
        RuntimeError: the model cannot be differentiated twice (the message names the criterion), or scoring
            under ``torch.inference_mode()``.

    >>> from lightning_prune_init.parameters import select_parameters
    >>> from lightning_prune_init.scoring.losses import make_loss
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> ctx = ScoringContext(loss=make_loss("label_free"))
    >>> sorted(grasp(net, [torch.randn(6, 3)], select_parameters(net), ctx))
    ['0.weight', '2.weight']
    """
    temperature = check_criterion_options(grasp, context.options)["temperature"]
    with_temperature = getattr(context.loss, "with_temperature", None)
    loss = with_temperature(temperature) if with_temperature is not None else context.loss
    batches = batch_list(batches, "grasp")
    names = list(parameters)
    tensors = [parameters[n] for n in names]
    with scoring_session(model, parameters, "grasp"), second_order("grasp"):
        g = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in tensors]
        for index, batch in enumerate(batches):
            with torch.enable_grad():
                grads = torch.autograd.grad(check_loss_value(loss(model, batch), index), tensors, allow_unused=True)
            for acc, gi in zip(g, grads):
                if gi is not None:
                    acc.add_(gi.float())
        if context.reduce_fn is not None:
            g = [context.reduce_fn(gi) for gi in g]
        theta_hg = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in tensors]
        for index, batch in enumerate(batches):
            with torch.enable_grad():
                value = check_loss_value(loss(model, batch), index)
                check_twice_differentiable(value, "grasp")
                grads = torch.autograd.grad(value, tensors, create_graph=True, allow_unused=True)
                z = sum((gi.to(gr.dtype) * gr).sum() for gi, gr in zip(g, grads) if gr is not None)
                if not isinstance(z, Tensor) or not z.requires_grad:
                    continue  # the loss is linear in the selected parameters: Hg = 0
                hg = torch.autograd.grad(z, tensors, allow_unused=True)
            for acc, h, p in zip(theta_hg, hg, tensors):
                if h is not None:
                    acc.add_(h.double() * p.detach().double())
    if context.reduce_fn is not None:
        theta_hg = [context.reduce_fn(t) for t in theta_hg]
    _check_finite(theta_hg, names)
    lowest = min(float(t.min()) for t in theta_hg)
    return {n: t - lowest for n, t in zip(names, theta_hg)}
