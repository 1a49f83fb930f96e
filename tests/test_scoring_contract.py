"""The scoring contract: the loss (make_loss), the registry's options, the checks before scoring, the guards.

Every silent error or raw torch error named by issues 11/12 for scoring has a test here that fails on the code
before the scoring package (checked: see the report of the scoring branch).
"""

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init import PruneAtInitCallback, connection_sensitivity
from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.selection import select_masks
from lightning_prune_init.scoring import (
    CRITERIA,
    ScoringContext,
    ScoringInputError,
    check_criterion_options,
    check_scoring_input,
    criterion_masks,
    make_loss,
    register_criterion,
    run_criterion,
)

from tests.helpers import OnceNet, conv_bn_net, lenet300


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def own_loss(model, batch):
    """A user's supervised loss (importable by path)."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def own_logits(model, batch):
    """A user's logits function (importable by path)."""
    return model(batch[0] if isinstance(batch, (tuple, list)) else batch)


def own_criterion(model, batches, parameters, context):
    """A user's criterion, never registered (importable by path)."""
    return {n: p.detach().abs() * context.options.get("factor", 1.0) for n, p in parameters.items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


# --- the loss contract ----------------------------------------------------------------------------------------
def test_label_free_with_loss_fn_is_refused_not_silently_supervised():
    """Before: labels='uniform' + loss_fn scored with loss_fn, i.e. gave exactly the masks of labels, silently."""
    net, batch = lenet300(), _batch()
    with pytest.raises(ValueError, match="cannot use `loss_fn`.*logits_fn"):
        connection_sensitivity(net, [batch], labels="uniform", loss_fn=own_loss)
    for supervision in ("label_free", "data_free"):
        with pytest.raises(ValueError, match=f"supervision='{supervision}' cannot use `loss_fn`"):
            criterion_masks(net, [batch], sparsity=0.9, supervision=supervision, loss_fn="tests.test_scoring_contract.own_loss")
        with pytest.raises(ValueError, match="cannot use `loss_fn`"):  # the callback refuses at construction
            PruneAtInitCallback(0.9, supervision=supervision, scoring={"loss_fn": own_loss})
    with pytest.raises(ValueError, match="supervision='labels' cannot use `logits_fn`"):
        make_loss("labels", logits_fn=own_logits)
    with pytest.raises(ValueError, match="`supervision` must be one of"):
        make_loss("uniform")


def test_logits_fn_gives_the_uniform_target_loss_by_hand():
    torch.manual_seed(0)
    net, (x, y) = lenet300(), _batch()
    scores = connection_sensitivity(net, [(x, y)], labels="uniform", logits_fn="tests.test_scoring_contract.own_logits")
    default = connection_sensitivity(net, [(x, y)], labels="uniform")
    assert _same(scores, default)  # the same logits, so the same scores, bit for bit
    ref = copy.deepcopy(net).eval()
    weights = [ref[i].weight for i in (1, 3, 5)]
    loss = -(F.log_softmax(ref(x), dim=1) / 10).sum(dim=1).mean()  # −(1/C) Σ_k log softmax(z)_k, batch mean
    grads = torch.autograd.grad(loss, weights)
    hand = [(g * w).abs().detach() for g, w in zip(grads, weights)]
    total = sum(float(h.sum()) for h in hand)
    for name, h in zip(scores, hand):
        torch.testing.assert_close(scores[name], h / total, rtol=1e-4, atol=1e-9)
    supervised = connection_sensitivity(net, [(x, y)], loss_fn=own_loss)
    assert _same(supervised, connection_sensitivity(net, [(x, y)]))  # labels: loss_fn = the default loss here
    assert not _same(supervised, scores)


def test_uniform_target_averages_over_every_leading_dimension():
    """logits [n, seq, C]: −(1/C) Σ_k log softmax(z)_k averaged over n and seq."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7))
    x = torch.randn(3, 4, 5)
    loss = make_loss("label_free", logits_fn=lambda model, batch: model(batch))(net, x)
    z = net(x)
    hand = sum(-float(F.log_softmax(z[i, j].detach(), dim=0).sum()) / 7 for i in range(3) for j in range(4)) / 12
    assert float(loss.detach()) == pytest.approx(hand, rel=1e-6)


def test_default_loss_errors_are_clear():
    net, (x, y) = lenet300(), _batch(4)
    with pytest.raises(ScoringInputError, match=r"cannot read a scoring batch of type dict.*forward takes no argument 'image'.*loss_fn"):
        connection_sensitivity(net, [{"image": x, "label": y}])
    with pytest.raises(ScoringInputError, match="labels='true' needs"):
        connection_sensitivity(net, [x])
    with pytest.raises(ScoringInputError, match="not logits"):
        connection_sensitivity(nn.Sequential(nn.Conv2d(1, 2, 3)), [x], labels="uniform")
    with pytest.raises(ScoringInputError, match="`logits_fn` must return floating logits"):
        connection_sensitivity(net, [x], labels="uniform", logits_fn=lambda model, batch: 3)
    with pytest.raises(ScoringInputError, match="scalar tensor"):
        connection_sensitivity(net, [(x, y)], loss_fn=lambda model, batch: model(batch[0]))


class _DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"out": self.fc(x)}


def test_check_scoring_input_raises_what_scoring_raises_and_changes_nothing():
    net = conv_bn_net().train()
    before = copy.deepcopy(net.state_dict())
    batch = (torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,)))
    rng = torch.get_rng_state()
    check_scoring_input(net, batch, make_loss("labels"))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training
    assert torch.equal(torch.get_rng_state(), rng) and all(p.grad is None for p in net.parameters())
    with pytest.raises(ScoringInputError, match="returned dict, not logits"):
        check_scoring_input(_DictModel(), (torch.randn(2, 4), torch.tensor([0, 1])), make_loss("labels"))
    with pytest.raises(ScoringInputError, match=r"targets range over \[0, 12\]"):
        check_scoring_input(net, (batch[0], torch.tensor([0, 1, 2, 12])), make_loss("labels"))
    with pytest.raises(ValueError, match="scores would not be finite"):
        check_scoring_input(net, (batch[0] * float("nan"), batch[1]), make_loss("labels"))


# --- the registry's options -------------------------------------------------------------------------------------
def test_criterion_options_are_checked_before_scoring():
    assert check_criterion_options("synflow", {"rounds": 3, "dtype": torch.float32}) == {
        "rounds": 3, "dtype": "float32", "input_shape": None}
    with pytest.raises(ValueError, match=r"'snip' takes no option 'rounds'.*no options"):
        check_criterion_options("snip", {"rounds": 3})
    with pytest.raises(ValueError, match=r"'grasp' takes no option 'tempreature'.*temperature=200.0"):
        check_criterion_options("grasp", {"tempreature": 1.0})
    with pytest.raises(ValueError, match="`rounds` must be an integer >= 1"):
        check_criterion_options("iterative_snip", {"rounds": 0})
    with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
        check_criterion_options("grasp", {"temperature": -1.0})
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        check_criterion_options("synflow", {"dtype": "float16"})
    with pytest.raises(ValueError, match="takes no option"):  # the callback refuses at construction
        PruneAtInitCallback(0.9, criterion="synflow", scoring={"options": {"round": 3}})
    # a criterion given by import path takes what it is given
    assert check_criterion_options("tests.test_scoring_contract.own_criterion", {"factor": 2}) == {"factor": 2}
    calls = []

    def spy(model, batches, parameters, context):
        calls.append(context)
        return {n: p.detach().abs() for n, p in parameters.items()}

    register_criterion("spy_with_options", options={"level": 1})(spy)
    try:
        with pytest.raises(ValueError, match="takes no option 'levle'"):
            criterion_masks(lenet300(), None, criterion="spy_with_options", sparsity=0.5, criterion_options={"levle": 2})
        assert calls == []
        criterion_masks(lenet300(), None, criterion="spy_with_options", sparsity=0.5, criterion_options={"level": 2})
        assert dict(calls[0].options) == {"level": 2}
    finally:
        CRITERIA.pop("spy_with_options")


def test_criterion_output_is_checked():
    net = lenet300()
    selection = select_parameters(net)

    def partial(model, batches, parameters, context):
        return {"1.weight": parameters["1.weight"].detach().abs()}

    def wrong_shape(model, batches, parameters, context):
        return {n: torch.ones(3) for n in parameters}

    with pytest.raises(ValueError, match=r"missing \['3.weight', '5.weight'\]"):
        run_criterion(partial, net, None, selection, ScoringContext())
    with pytest.raises(ValueError, match=r"wrong shape: 1.weight \(3,\) vs \(300, 784\)"):
        run_criterion(wrong_shape, net, None, selection, ScoringContext())
    with pytest.raises(ValueError, match="selected on another module"):
        run_criterion("magnitude", lenet300(), None, selection, ScoringContext())


def test_context_is_checked_when_made():
    with pytest.raises(ValueError, match="`scope` must be one of"):
        ScoringContext(scope="local")
    with pytest.raises(ValueError, match="`min_density` must be a finite number in"):
        ScoringContext(min_density=2.0)
    with pytest.raises(ValueError, match="`pattern` must be 'n:m'"):
        ScoringContext(pattern="4:2")
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        ScoringContext(generator=0)
    with pytest.raises(TypeError, match="`loss` must be a function"):
        ScoringContext(loss="snip")
    with pytest.raises(ValueError, match="'synflow' prunes in rounds and needs `sparsity`"):
        ScoringContext().target_sparsity("synflow")
    assert ScoringContext(pattern="1:4").target_sparsity() == 0.75
    with pytest.raises(TypeError):
        ScoringContext().options["rounds"] = 3  # read-only


# --- guards -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["snip", "grasp", "iterative_snip", "synflow"])
def test_scoring_under_inference_mode_is_refused_clearly(criterion):
    """Before: `element 0 of tensors does not require grad and does not have a grad_fn`."""
    net, batch = lenet300(), _batch(4)
    options = {"rounds": 2} if criterion in ("synflow", "iterative_snip") else None
    with torch.inference_mode(), pytest.raises(RuntimeError, match=rf"'{criterion}' needs autograd.*inference_mode"):
        criterion_masks(net, [batch], criterion=criterion, sparsity=0.5, criterion_options=options)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="needs autograd"):
        check_scoring_input(net, batch, make_loss())


@pytest.mark.parametrize("criterion", ["snip", "magnitude", "synflow"])
def test_a_meta_device_model_is_refused_clearly(criterion):
    """Before: `Tensor.item() cannot be called on meta tensors` (snip) or meta 'masks'."""
    net = lenet300().to("meta")
    x, y = _batch(4)
    with pytest.raises(ValueError, match=rf"'{criterion}' cannot score Sequential: 1.weight.*meta device.*to_empty"):
        criterion_masks(net, [(x.to("meta"), y.to("meta"))], criterion=criterion, sparsity=0.5,
                        criterion_options={"rounds": 1} if criterion == "synflow" else None)


@pytest.mark.parametrize("criterion", ["snip", "grasp", "iterative_snip"])
def test_frozen_tensors_included_by_name_are_scored_and_stay_frozen(criterion):
    """Before: `One of the differentiated Tensors does not require grad`. Now: scored as if trainable, and
    requires_grad is restored afterwards, also when scoring fails."""
    torch.manual_seed(0)
    net, batch = lenet300(), _batch()
    options = {"rounds": 2} if criterion == "iterative_snip" else None
    trainable, _ = criterion_masks(net, [batch], criterion=criterion, sparsity=0.9, criterion_options=options)
    net[1].weight.requires_grad_(False)
    assert "1.weight" not in select_parameters(net)  # the default rule leaves frozen tensors out
    names = ["1.weight", "3.weight", "5.weight"]
    frozen, _ = criterion_masks(net, [batch], criterion=criterion, sparsity=0.9, parameters=names, criterion_options=options)
    assert _same(frozen, trainable)
    assert not net[1].weight.requires_grad and net[3].weight.requires_grad

    def failing_loss(model, b):
        assert model[1].weight.requires_grad  # trainable while scoring
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        criterion_masks(net, [batch], criterion=criterion, sparsity=0.9, parameters=names, loss_fn=failing_loss,
                        criterion_options=options)
    assert not net[1].weight.requires_grad and net[3].weight.requires_grad


class _FusedAttention(nn.Module):
    """Self-attention calling PyTorch's fused CPU flash kernel directly (no double backward; the math-kernel switch
    of scaled_dot_product_attention cannot reach a direct call), then a linear head."""

    def __init__(self):
        super().__init__()
        self.qkv, self.head = nn.Linear(8, 24), nn.Linear(8, 3)

    def forward(self, x):  # x [n, seq, 8]
        q, k, v = (t.unsqueeze(1) for t in self.qkv(x).chunk(3, dim=-1))
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        return self.head(out.squeeze(1).mean(dim=1))


def test_grasp_on_a_model_without_second_derivative_says_so():
    """Before: the raw `derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented`
    (then also for models using F.scaled_dot_product_attention, see tests/test_scoring_tokens.py)."""
    torch.manual_seed(0)
    net = _FusedAttention()
    batch = (torch.randn(4, 5, 8), torch.randint(0, 3, (4,)))
    criterion_masks(net, [batch], criterion="snip", sparsity=0.5)  # first derivatives are fine
    with pytest.raises(RuntimeError, match=r"criterion 'grasp' needs second derivatives.*cannot be differentiated twice"):
        criterion_masks(net, [batch], criterion="grasp", sparsity=0.5)


@pytest.mark.skipif("pattern" not in inspect.signature(select_masks).parameters,
                    reason="select_masks has no N:M `pattern` yet (added on the sparse branch)")
@pytest.mark.parametrize("criterion", ["snip", "synflow", "iterative_snip"])
def test_a_pattern_reaches_select_masks_and_the_last_round(criterion):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
    batch = (torch.randn(8, 8), torch.randint(0, 4, (8,)))
    options = {"snip": None, "synflow": {"rounds": 3, "input_shape": (8,)}, "iterative_snip": {"rounds": 3}}[criterion]
    scores, masks = criterion_masks(net, [batch], criterion=criterion, sparsity=None, pattern="2:4",
                                    criterion_options=options)
    for name, m in masks.items():
        assert bool((m.reshape(m.shape[0], -1, 4).sum(dim=-1) == 2).all()), name


def test_grasp_refuses_a_once_differentiable_function_instead_of_a_wrong_hessian():
    """Before: no error, and θ⊙Hg silently without the Function's second-order terms."""
    torch.manual_seed(0)
    net = OnceNet()
    batch = (torch.randn(4, 6), torch.randint(0, 3, (4,)))
    with pytest.raises(RuntimeError, match=r"'grasp' needs second derivatives.*OnceTanh has a @once_differentiable"):
        criterion_masks(net, [batch], criterion="grasp", sparsity=0.5)
