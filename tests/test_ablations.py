"""Sanity ablations: each changes what it claims to change, nothing else, deterministically under a seed."""

import copy

import pytest
import torch

from lightning_prune_init import apply_masks, connection_sensitivity, get_masks, select_masks
from lightning_prune_init.ablations import random_masks_like, reinitialize_kept_, shuffle_masks
from lightning_prune_init.init import orthogonal_, variance_scaling_
from lightning_prune_init.layouts import layout_of

from tests.helpers import conv_bn_net


def _net_and_masks(sparsity=0.8):
    torch.manual_seed(0)
    net = conv_bn_net()
    batch = (torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,)))
    masks = select_masks(connection_sensitivity(net, [batch]), sparsity, on_layer_collapse="ignore")
    return net, masks, batch


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("ablation", [shuffle_masks, random_masks_like])
def test_same_count_per_layer_new_positions_deterministic(ablation):
    _, masks, _ = _net_and_masks()
    out = ablation(masks, generator=torch.Generator().manual_seed(7))
    assert out.keys() == masks.keys()
    for n, m in masks.items():
        assert out[n].dtype == torch.bool and out[n].shape == m.shape
        assert int(out[n].sum()) == int(m.sum())
        moved = int((out[n] & ~m).sum())
        assert moved > 0.5 * (1 - int(m.sum()) / m.numel()) * int(m.sum())  # about (1 - density) of them move
    assert _equal(out, ablation(masks, generator=7))  # an int seed is a CPU generator with that seed
    assert not _equal(out, ablation(masks, generator=8))
    assert _equal(masks, _net_and_masks()[1])  # the input is not modified


def test_shuffle_is_a_permutation_of_each_mask_drawn_from_the_generator():
    masks = {"a": torch.tensor([[True, False, False], [True, True, False]]), "b": torch.tensor([False, True])}
    out = shuffle_masks(masks, generator=3)
    g = torch.Generator().manual_seed(3)
    for n, m in masks.items():
        perm = torch.randperm(m.numel(), generator=g)
        assert torch.equal(out[n].reshape(-1), m.reshape(-1)[perm])


def test_random_masks_like_depends_only_on_the_counts():
    a = {"w": torch.tensor([True, True, False, False, False, False])}
    b = {"w": torch.tensor([False, False, False, False, True, True])}
    assert _equal(random_masks_like(a, generator=1), random_masks_like(b, generator=1))
    g = torch.Generator().manual_seed(1)
    kept = torch.randperm(6, generator=g)[:2]
    assert sorted(random_masks_like(a, generator=1)["w"].nonzero().reshape(-1).tolist()) == sorted(kept.tolist())
    # whereas a shuffle permutes the given positions: different inputs, different outputs for the same seed
    assert not _equal(shuffle_masks(a, generator=1), shuffle_masks(b, generator=1))


@pytest.mark.parametrize("scheme", ["orthogonal", "vs-he"])
def test_reinitialize_kept_changes_only_the_kept_values(scheme):
    net, masks, batch = _net_and_masks()
    apply_masks(net, masks)
    identities = {n: id(p) for n, p in net.named_parameters()}
    before = copy.deepcopy(net.state_dict())
    reinitialize_kept_(net, masks, scheme=scheme, generator=5)

    # hand: the same draws, in mask order, from a generator with the same seed
    g = torch.Generator().manual_seed(5)
    for n, m in masks.items():
        fresh = torch.empty(m.shape)
        orthogonal_(fresh, 1.0, generator=g) if scheme == "orthogonal" else variance_scaling_(fresh, "he", generator=g)
        p = net.get_parameter(n).detach()
        assert torch.equal(p[m], fresh[m])
        assert bool((p[m] != before[n][m]).all())  # every kept value changed
        assert torch.count_nonzero(p[~m]) == 0  # pruned entries stay exactly 0
    assert _equal(get_masks(net), masks)
    for k, v in net.state_dict().items():  # biases, batch norm, buffers: untouched
        if k not in masks:
            assert torch.equal(v, before[k]), k
    assert {n: id(p) for n, p in net.named_parameters()} == identities

    again, _, _ = _net_and_masks()
    apply_masks(again, masks)
    reinitialize_kept_(again, masks, scheme=scheme, generator=5)
    assert _equal(again.state_dict(), net.state_dict())  # deterministic under the seed


def test_reinitialize_kept_refuses_before_changing_anything():
    net, masks, _ = _net_and_masks()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="scheme"):
        reinitialize_kept_(net, masks, scheme="xavier", generator=0)
    with pytest.raises(ValueError, match="not a parameter"):
        reinitialize_kept_(net, {**masks, "head.weight": torch.ones(2, 2, dtype=torch.bool)}, generator=0)
    with pytest.raises(TypeError, match="generator"):
        reinitialize_kept_(net, masks, generator=None)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 4, 3))
    model.steps = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.long), requires_grad=False)
    snapshot = copy.deepcopy(model.state_dict())
    all_kept = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    with pytest.raises(TypeError, match="'steps' is not floating point"):
        reinitialize_kept_(model, all_kept, scheme="orthogonal", generator=0)
    assert _equal(model.state_dict(), snapshot)  # the convs, checked fine, were not written either
    assert _equal(net.state_dict(), before)


def test_reinitialize_kept_draws_per_layout():
    # grouped, depthwise and c_in > c_out convs get the per-group draws of init_model_
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 16, 3, groups=2), torch.nn.Conv2d(16, 4, 3)
    )
    before = copy.deepcopy(model.state_dict())
    all_kept = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    with torch.no_grad():
        model[0].bias.fill_(1.0)
    reinitialize_kept_(model, all_kept, scheme="orthogonal", generator=3)
    dw = model[0].weight.detach().reshape(8, 9)
    assert torch.equal(dw.abs().sum(1), torch.ones(8))  # depthwise: one ±1 tap per channel
    assert torch.equal(torch.count_nonzero(dw, dim=1), torch.ones(8, dtype=torch.long))
    wide = model[2].weight.detach().double().reshape(4, -1)
    assert torch.max(torch.abs(wide @ wide.T - torch.eye(4, dtype=torch.float64))) < 1e-6
    assert all(torch.count_nonzero(model[i].bias) == 0 for i in range(3))  # kept bias entries: zeros
    g = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():  # the same draws as orthogonal_ with each layer's layout, in order
        if p.dim() > 1:
            module = model[int(name.split(".")[0])]
            fresh = orthogonal_(torch.empty(p.shape), layout=layout_of(module, "weight"), generator=g)
            assert torch.equal(p.detach(), fresh), name
    assert not _equal(model.state_dict(), before)


def test_inverted_scores_keep_the_lowest():
    net, _, batch = _net_and_masks()
    scores = connection_sensitivity(net, [batch])
    inverted = select_masks(scores, 0.8, invert=True, on_layer_collapse="ignore")
    kept = torch.cat([scores[n][inverted[n]] for n in scores])
    pruned = torch.cat([scores[n][~inverted[n]] for n in scores])
    assert float(kept.max()) <= float(pruned.min())
    total = sum(s.numel() for s in scores.values())
    assert sum(int(m.sum()) for m in inverted.values()) == round(total * 0.2)
    assert _equal(inverted, select_masks(scores, 0.8, invert=True, on_layer_collapse="ignore"))
