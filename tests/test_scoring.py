"""Connection sensitivity against a hand computation; label-free and data-free modes; no trace left."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_prune_init import connection_sensitivity, select_masks, select_parameters
from lightning_prune_init.scoring import noise_batches
from lightning_prune_init.scoring import ScoringInputError

from tests.helpers import conv_bn_net, lenet300


def _hand_scores(model, batches, labels="true"):
    """|Σ_b ∂L_b/∂c| at c = 1, with an explicit all-ones mask c on each conv/linear weight (SNIP's definition)."""
    model = copy.deepcopy(model).eval()
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    for x, y in batches:
        cs = {n: torch.ones_like(w, requires_grad=True) for n, w in weights.items()}
        params = {n: p.detach() for n, p in model.named_parameters()}
        params.update({n: weights[n] * cs[n] for n in weights})
        logits = functional_call(model, params, (x,))
        if labels == "true":
            loss = F.cross_entropy(logits, y)
        else:
            loss = -F.log_softmax(logits, dim=1).mean()
        grads = torch.autograd.grad(loss, list(cs.values()))
        for n, g in zip(cs, grads):
            total[n] += g
    return {n: t.abs() for n, t in total.items()}


def _hand_topk(scores, sparsity):
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = round(flat.numel() * (1 - sparsity))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, k).indices] = True
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out, k


@pytest.mark.parametrize(
    "make_net, shape", [(lenet300, (1, 28, 28)), (conv_bn_net, (1, 12, 12))], ids=["lenet300", "conv_bn"]
)
@pytest.mark.parametrize("labels", ["true", "uniform"])
def test_masks_equal_hand_computation(make_net, shape, labels):
    torch.manual_seed(0)
    net = make_net()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, *shape, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(3)]
    scores = connection_sensitivity(net, batches, labels=labels)
    hand = _hand_scores(net, batches, labels)
    assert scores.keys() == hand.keys()
    total = sum(h.sum() for h in hand.values())
    for n in hand:
        torch.testing.assert_close(scores[n], hand[n] / total, rtol=1e-4, atol=1e-9)
    masks = select_masks(scores, 0.9)
    hand_masks, k = _hand_topk(hand, 0.9)
    assert sum(int(m.sum()) for m in masks.values()) == k
    for n in masks:  # the κ-th and (κ+1)-th scores are far apart here: no float tie can flip an entry
        assert torch.equal(masks[n], hand_masks[n]), n


def test_signed_sum_over_batches_before_absolute_value():
    torch.manual_seed(0)
    net = lenet300()
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    one = connection_sensitivity(net, [(x, y)], normalize=False)
    # the same batch with negated inputs flips the sign of the linear first layer's input gradients; summing
    # signed values then cancels part of them, which summing |values| would not
    two = connection_sensitivity(net, [(x, y), (x, y)], normalize=False)
    for n in one:
        torch.testing.assert_close(two[n], 2 * one[n])
    mixed = connection_sensitivity(net, [(x, y), (-x, y)], normalize=False)
    separate = connection_sensitivity(net, [(-x, y)], normalize=False)
    assert any(bool((mixed[n] < one[n] + separate[n] - 1e-9).any()) for n in one)


def test_data_free_noise_is_seeded_and_independent_of_global_rng():
    like = torch.zeros(4, 1, 28, 28)
    a = noise_batches(like, 2, seed=3)
    torch.manual_seed(123)
    b = noise_batches(like, 2, seed=3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], a[1])
    net = lenet300()
    scores = connection_sensitivity(net, a, labels="uniform")
    hand = _hand_scores(net, [(t, None) for t in a], labels="uniform")
    total = sum(h.sum() for h in hand.values())
    for n in hand:
        torch.testing.assert_close(scores[n], hand[n] / total, rtol=1e-4, atol=1e-9)


def test_scoring_leaves_no_trace():
    torch.manual_seed(0)
    net = conv_bn_net()
    net.train()
    net[1].eval()  # a mixed mode must be restored exactly
    # give BN non-trivial running statistics first
    with torch.no_grad():
        net[1].running_mean.uniform_()
        net[5].running_var.uniform_(0.5, 2)
    before = copy.deepcopy(net.state_dict())
    modes = [m.training for m in net.modules()]
    batch = (torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,)))
    rng = torch.get_rng_state()
    connection_sensitivity(net, [batch])
    assert all(p.grad is None for p in net.parameters())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_include_exclude_and_biases():
    net = lenet300()
    assert list(select_parameters(net)) == ["1.weight", "3.weight", "5.weight"]
    assert list(select_parameters(net, prune_biases=True)) == [
        "1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"
    ]
    assert list(select_parameters(net, exclude="5.*")) == ["1.weight", "3.weight"]
    # a 1-D tensor matched only by a wildcard is skipped with a note (issue 11); named exactly, or with
    # prune_biases for a layer's bias, it is selected
    selection = select_parameters(net, include=["3.*"])
    assert list(selection) == ["3.weight"]
    assert selection.notes and "3.bias" in selection.notes[0] and "prune_biases=True" in selection.notes[0]
    assert list(select_parameters(net, include=["3.*"], prune_biases=True)) == ["3.weight", "3.bias"]
    assert list(select_parameters(net, include=["3.weight", "3.bias"])) == ["3.weight", "3.bias"]


def test_bad_inputs_have_clear_messages():
    net = lenet300()
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(ValueError, match="matches no parameter"):
        connection_sensitivity(net, [(x, torch.zeros(4, dtype=torch.long))], parameters="encoder.*")
    with pytest.raises(ValueError, match="no prunable parameters"):
        connection_sensitivity(torch.nn.Sequential(torch.nn.ReLU()), [x], labels="uniform")
    with pytest.raises(ScoringInputError, match="loss_fn"):
        connection_sensitivity(net, [{"image": x}])
    with pytest.raises(ScoringInputError, match="labels='uniform'"):
        connection_sensitivity(net, [x])
    with pytest.raises(ScoringInputError, match=r"targets range over \[0, 12\]"):
        connection_sensitivity(net, [(x, torch.tensor([0, 1, 2, 12]))])
    with pytest.raises(ValueError, match="loss is nan"):
        connection_sensitivity(net, [(x * float("nan"), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ValueError, match="empty"):
        connection_sensitivity(net, [])


def test_custom_loss_fn_by_import_path():
    net = lenet300()
    x = torch.randn(4, 1, 28, 28)
    scores = connection_sensitivity(net, [{"image": x}], loss_fn="tests.helpers.dict_batch_loss")
    assert abs(sum(float(s.sum()) for s in scores.values()) - 1.0) < 1e-5
