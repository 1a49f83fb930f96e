"""Mask guarantees: exact zeros after real optimizer steps, zero optimizer state, same Parameters and keys,
two forwards before one backward, deepcopy/pickle, packing, removal and torch.nn.utils.prune interop."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init import (
    apply_masks,
    connection_sensitivity,
    get_masks,
    remove_masks,
    select_masks,
    sparsity_report,
)
from lightning_prune_init.masks import pack_masks, to_torch_prune, unpack_masks

from tests.helpers import conv_bn_net, lenet300


def _pruned(make_net=lenet300, shape=(1, 28, 28), sparsity=0.9, seed=0):
    torch.manual_seed(seed)
    net = make_net()
    batch = (torch.randn(32, *shape), torch.randint(0, 10, (32,)))
    masks = select_masks(connection_sensitivity(net, [batch]), sparsity)
    return net, masks, batch


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
    ],
    ids=["sgd_momentum_wd", "adamw"],
)
@pytest.mark.parametrize("make_net, shape", [(lenet300, (1, 28, 28)), (conv_bn_net, (1, 12, 12))], ids=["mlp", "conv"])
def test_pruned_entries_stay_exactly_zero_through_50_steps(make_optimizer, make_net, shape):
    net, masks, _ = _pruned(make_net, shape)
    params_before = {n: p for n, p in net.named_parameters()}
    keys_before = list(net.state_dict().keys())
    optimizer = make_optimizer(net.parameters())
    apply_masks(net, masks, optimizers=[optimizer])
    g = torch.Generator().manual_seed(5)
    for _ in range(50):
        x, y = torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    named = dict(net.named_parameters())
    assert all(named[n] is params_before[n] for n in named)  # same Parameter objects, same names
    assert list(net.state_dict().keys()) == keys_before  # plain keys
    for n, mask in masks.items():
        p = named[n]
        assert torch.count_nonzero(p[~mask]) == 0, n
        assert torch.count_nonzero(p[mask]) > 0.99 * int(mask.sum())  # kept weights do train
        for key, value in optimizer.state[p].items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert torch.count_nonzero(value[~mask]) == 0, (n, key)
        assert torch.count_nonzero(p.grad[~mask]) == 0


def test_zeros_hold_in_a_state_dict_taken_right_after_a_step():
    net, masks, (x, y) = _pruned()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    apply_masks(net, masks, optimizers=[optimizer])
    with torch.no_grad():  # something outside the optimizer writes into pruned entries ...
        net[1].weight.add_(1.0)
    optimizer.zero_grad()
    F.cross_entropy(net(x), y).backward()  # ... the forward pre-hook zeroes them before use
    optimizer.step()
    state = net.state_dict()  # no forward in between: the optimizer step hook has zeroed them
    assert torch.count_nonzero(state["1.weight"][~masks["1.weight"]]) == 0


def test_two_forward_passes_before_one_backward():
    net, masks, (x, y) = _pruned()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    apply_masks(net, masks, optimizers=[optimizer])
    for _ in range(3):  # siamese style: both outputs in one graph, after an optimizer step each time
        optimizer.zero_grad()
        a, b = net(x), net(x.flip(0))
        (F.cross_entropy(a, y) + F.mse_loss(a.softmax(1), b.softmax(1))).backward()
        optimizer.step()
    for n, mask in masks.items():
        assert torch.count_nonzero(dict(net.named_parameters())[n][~mask]) == 0


def test_pruned_state_dict_loads_strictly_into_a_plain_model():
    net, masks, _ = _pruned()
    apply_masks(net, masks)
    plain = lenet300()
    plain.load_state_dict(net.state_dict(), strict=True)
    for n, mask in masks.items():
        assert torch.equal(plain.get_parameter(n), net.get_parameter(n))
        assert torch.count_nonzero(plain.get_parameter(n)[~mask]) == 0


def test_deepcopy_and_pickle_keep_masks_enforced():
    net, masks, (x, y) = _pruned()
    apply_masks(net, masks)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(net), torch.load(buffer, weights_only=False)):
        got = get_masks(clone)
        assert all(torch.equal(got[n], masks[n]) for n in masks)
        F.cross_entropy(clone(x), y).backward()
        assert all(torch.count_nonzero(clone.get_parameter(n).grad[~m]) == 0 for n, m in masks.items())
        assert clone[1].weight is not net[1].weight


def test_get_masks_through_a_wrapper_and_report():
    net, masks, _ = _pruned()
    apply_masks(net, masks)
    wrapper = nn.Sequential(net)
    got = get_masks(wrapper)
    assert set(got) == {f"0.{n}" for n in masks}
    report = sparsity_report(net)
    assert report.total == 266_200
    assert report.kept == round(266_200 * 0.1)
    assert report.layers["1.weight"].kept == int(masks["1.weight"].sum())
    assert "total" in str(report)


def test_pack_unpack_roundtrip_is_bit_exact_and_small():
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(13, 7, generator=g) > 0.5, "b": torch.rand(3, 2, 5, 5, generator=g) > 0.9}
    packed = pack_masks(masks)
    assert packed["masks"]["a"]["bits"].dtype == torch.uint8
    assert packed["masks"]["a"]["bits"].numel() == (13 * 7 + 7) // 8
    restored = unpack_masks(packed)
    assert all(torch.equal(restored[n], masks[n]) for n in masks)


def test_remove_masks_leaves_a_plain_model_and_to_torch_prune_interop():
    net, masks, (x, y) = _pruned()
    apply_masks(net, masks)
    removed = remove_masks(net)
    assert all(torch.equal(removed[n], masks[n]) for n in masks)
    assert get_masks(net) == {}
    assert all(not m._forward_pre_hooks for m in net.modules())
    F.cross_entropy(net(x), y).backward()
    assert torch.count_nonzero(net[1].weight.grad[~masks["1.weight"]]) > 0  # no longer masked

    net2, masks2, _ = _pruned()
    apply_masks(net2, masks2)
    to_torch_prune(net2)
    assert torch.equal(net2[1].weight_mask.bool(), masks2["1.weight"])
    assert "1.weight_orig" in dict(net2.named_parameters())


def test_apply_masks_rejects_bad_masks_and_leaves_model_unchanged():
    net, masks, _ = _pruned()
    before = copy.deepcopy(net.state_dict())
    bad_cases = [
        ({"fc.weight": masks["1.weight"]}, ValueError, "not a parameter"),
        ({"1.weight": masks["1.weight"].float()}, TypeError, "torch.bool"),
        ({"1.weight": masks["3.weight"]}, ValueError, "shape"),
        ({**masks, "9.weight": masks["1.weight"]}, ValueError, "not a parameter"),
    ]
    for bad, error, message in bad_cases:
        with pytest.raises(error, match=message):
            apply_masks(net, bad)
        assert get_masks(net) == {}
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class _MixingOptimizer(torch.optim.SGD):
    """Not elementwise: its update adds the mean of the gradient to every entry (like a preconditioner mixing entries)."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.abs().mean() + 1e-3)


def test_non_elementwise_optimizer_gets_full_rezeroing_after_each_step():
    net, masks, (x, y) = _pruned()
    optimizer = _MixingOptimizer(net.parameters(), lr=0.1)
    apply_masks(net, masks, optimizers=[optimizer])
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        state = net.state_dict()  # right after the step, no forward in between
        assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in masks.items())


def test_weights_changed_between_forward_and_step_are_rezeroed_after_the_step():
    net, masks, (x, y) = _pruned()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)  # elementwise: its step is trusted
    apply_masks(net, masks, optimizers=[optimizer])
    optimizer.zero_grad()
    F.cross_entropy(net(x), y).backward()
    with torch.no_grad():
        net[3].weight.add_(0.5)  # after the forward, before the step: not the optimizer's doing
    optimizer.step()
    state = net.state_dict()
    assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in masks.items())
