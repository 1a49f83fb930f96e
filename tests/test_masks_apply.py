"""apply_masks is all or nothing, handles frozen and tied parameters; remove_masks by name; the pruning_masks()
protocol; reports that name the aliases of tied tensors (issues 11.2, 12.5)."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.masks import (
    apply_masks,
    enforce_masks_,
    get_masks,
    masked_nonzeros,
    remove_masks,
    sparsity_report,
)
from lightning_prune_init.parameters import select_parameters


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _masks(net, names=("0.weight", "2.weight", "4.weight"), seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(net.get_parameter(n).shape, generator=g) > 0.5 for n in names}


def _hooks(net):
    """Every hook a module or parameter of ``net`` carries (torch's hook dicts), to compare before/after."""
    counts = {}
    for name, module in net.named_modules():
        counts[f"{name}:forward_pre"] = len(module._forward_pre_hooks)
        counts[f"{name}:state_dict_pre"] = len(module._state_dict_pre_hooks)
    for name, p in net.named_parameters():
        counts[f"{name}:grad"] = len(p._post_accumulate_grad_hooks or {})
    return counts


def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}, _hooks(net), get_masks(net)


def _same(net, snapshot):
    state, hooks, masks = snapshot
    now = get_masks(net)
    return (
        all(torch.equal(state[k], v) for k, v in net.state_dict().items())
        and _hooks(net) == hooks
        and now.keys() == masks.keys()
        and all(torch.equal(now[n], masks[n]) for n in masks)
    )


# --- all or nothing ------------------------------------------------------------------------------------------
class NoGradHookParameter(nn.Parameter):
    def register_post_accumulate_grad_hook(self, hook):
        raise RuntimeError("no gradient hooks on this tensor")


class NoStateDictHookLinear(nn.Linear):
    def register_state_dict_pre_hook(self, hook):
        raise RuntimeError("no state-dict hooks on this module")


class NoStepHookSGD(torch.optim.SGD):
    def register_step_post_hook(self, hook):
        raise RuntimeError("no step hooks on this optimizer")


def _break(net, how):
    if how == "gradient hook":
        net[4].weight = NoGradHookParameter(net[4].weight.detach().clone())
    elif how == "module hook":
        bad = NoStateDictHookLinear(4, 3)
        bad.load_state_dict(net[4].state_dict())
        net[4] = bad
    return [NoStepHookSGD(net.parameters(), lr=0.1)] if how == "optimizer hook" else []


@pytest.mark.parametrize("already_masked", [False, True], ids=["fresh", "with_earlier_masks"])
@pytest.mark.parametrize("how", ["gradient hook", "module hook", "optimizer hook"])
def test_a_failure_while_attaching_leaves_the_model_exactly_as_before(how, already_masked):
    net = _net()
    masks = _masks(net)
    if already_masked:
        apply_masks(net, {"2.weight": ~masks["2.weight"]})  # must survive the failed call unchanged
    optimizers = _break(net, how)
    before = _snapshot(net)
    with pytest.raises(RuntimeError, match="no .* hooks"):
        apply_masks(net, masks, optimizers=optimizers)
    assert _same(net, before)
    F.cross_entropy(net(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
    assert torch.count_nonzero(net[0].weight.grad[~masks["0.weight"]]) > 0  # no gradient hook left behind
    if already_masked:
        assert torch.count_nonzero(net[2].weight.grad[masks["2.weight"]]) == 0  # the earlier mask still works


def test_bad_input_is_refused_before_anything_changes():
    net = _net()
    masks = _masks(net)
    apply_masks(net, {"2.weight": masks["2.weight"]})
    before = _snapshot(net)
    cases = [
        ("not a module", {}, TypeError, "must be a torch.nn.Module"),
        (net, {"fc.weight": masks["0.weight"]}, ValueError, "'fc.weight' is not a parameter"),
        (net, {**masks, "0.weight": masks["0.weight"].int()}, TypeError, "torch.bool"),
        (net, {**masks, "4.weight": masks["0.weight"]}, ValueError, "shape"),
        (net, {}, ValueError, "empty"),
    ]
    for model, bad, error, message in cases:
        with pytest.raises(error, match=message):
            apply_masks(model, bad)
        assert _same(net, before)
    with pytest.raises(TypeError, match="`optimizers` must be a list of torch.optim.Optimizer"):
        apply_masks(net, masks, optimizers=[net])
    assert _same(net, before)


def test_applying_again_replaces_masks_and_keeps_one_set_of_hooks():
    net = _net()
    first, second = _masks(net, seed=1), _masks(net, seed=2)
    apply_masks(net, first)
    hooks = _hooks(net)
    apply_masks(net, second)
    apply_masks(net, {"0.weight": second["0.weight"]})
    assert _hooks(net) == hooks
    assert hooks["0:forward_pre"] == hooks["0:state_dict_pre"] == hooks["0.weight:grad"] == 1
    got = get_masks(net)
    assert all(torch.equal(got[n], second[n]) for n in second)
    with torch.no_grad():
        for n in second:
            net.get_parameter(n).add_(1.0)
    net(torch.randn(2, 6))
    assert masked_nonzeros(net, second) == dict.fromkeys(second, 0)


# --- frozen and tied parameters ------------------------------------------------------------------------------
def test_frozen_parameter_is_zeroed_and_enforced_and_masked_once_unfrozen():
    net = _net()
    net[2].weight.requires_grad_(False)
    masks = _masks(net)
    apply_masks(net, masks)  # used to raise, leaving a mask registered
    assert masked_nonzeros(net, masks) == dict.fromkeys(masks, 0)
    with torch.no_grad():
        net[2].weight.add_(1.0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    F.cross_entropy(net(x), y).backward()
    assert masked_nonzeros(net, masks)["2.weight"] == 0 and net[2].weight.grad is None
    net[2].weight.requires_grad_(True)  # unfrozen later: the next forward registers its gradient hook
    F.cross_entropy(net(x), y).backward()
    grad = net[2].weight.grad
    assert torch.count_nonzero(grad[~masks["2.weight"]]) == 0 and torch.count_nonzero(grad[masks["2.weight"]]) > 0


class TiedLM(nn.Module):
    """An embedding and a head sharing one weight (as GPT-2 and tied Llama do)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(12, 6, _weight=torch.randn(12, 6, generator=g))
        self.mid, self.head = nn.Linear(6, 6), nn.Linear(6, 12, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


@pytest.mark.parametrize("key", ["emb.weight", "head.weight"])
def test_tied_weight_is_keyed_by_its_canonical_name_and_every_holder_sees_zeros(key):
    model = TiedLM()
    mask = torch.rand(12, 6, generator=torch.Generator().manual_seed(3)) > 0.5
    apply_masks(model, {key: mask, "mid.weight": torch.ones(6, 6, dtype=torch.bool)})
    assert set(get_masks(model)) == {"emb.weight", "mid.weight"}
    assert torch.equal(get_masks(model)["emb.weight"], mask)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # an in-place change, then the head runs on its own (before the embedding)
    h = torch.randn(3, 6)
    out = model.head(h)
    assert torch.equal(out, h @ (model.emb.weight * mask).T)
    assert masked_nonzeros(model, {"head.weight": mask}) == {"head.weight": 0}
    state = model.state_dict()  # both names are saved, both hold the zeros
    assert torch.count_nonzero(state["emb.weight"][~mask]) == 0 and torch.count_nonzero(state["head.weight"][~mask]) == 0


def test_two_names_of_one_tied_tensor_must_carry_the_same_mask():
    model = TiedLM()
    mask = torch.rand(12, 6) > 0.5
    apply_masks(model, {"emb.weight": mask, "head.weight": mask.clone()})  # same mask twice: accepted
    with pytest.raises(ValueError, match="different masks for 'emb.weight' and 'head.weight'"):
        apply_masks(TiedLM(), {"emb.weight": mask, "head.weight": ~mask})


def test_report_names_the_aliases_of_tied_tensors():
    model = TiedLM()
    selection = select_parameters(model)
    assert list(selection) == ["emb.weight", "mid.weight"]
    masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in selection.items()}
    masks["emb.weight"][:, :3] = False
    apply_masks(model, masks)
    report = sparsity_report(model, selection)
    assert report.layers["emb.weight"].aliases == ("head.weight",)
    assert (report.layers["emb.weight"].kept, report.layers["emb.weight"].total) == (36, 72)
    lines = str(report).splitlines()
    assert lines[2].split() == ["emb.weight", "(also", "head.weight)", "36", "72", "50.00%"]
    assert lines[-1].split() == ["total", "72", "108", "66.67%"]
    assert report.to_dict()["layers"]["emb.weight"]["aliases"] == ["head.weight"]
    assert "aliases" not in report.to_dict()["layers"]["mid.weight"]
    with pytest.raises(TypeError, match="ParameterSelection"):
        sparsity_report(model, "*.weight")


def test_gpt2_head_tied_to_the_embedding_is_masked_once_and_reported_with_its_alias():
    pytest.importorskip("transformers")
    from tests.zoo import tiny_gpt2, token_batch

    model = tiny_gpt2()
    selection = select_parameters(model, include=["transformer.wte.weight", "*.c_attn.weight"])
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) > 0.8 for n, p in selection.items()}
    apply_masks(model, {("lm_head.weight" if n == "transformer.wte.weight" else n): m for n, m in masks.items()})
    assert set(get_masks(model)) == set(masks)
    label = str(sparsity_report(model, selection)).splitlines()[2]
    assert label.startswith("transformer.wte.weight (also lm_head.weight)")
    batch = token_batch()
    model(**batch).loss.backward()
    wte = model.transformer.wte.weight
    assert torch.count_nonzero(wte.grad[~masks["transformer.wte.weight"]]) == 0
    assert masked_nonzeros(model, masks) == dict.fromkeys(masks, 0)


# --- copies, removal by name, the pruning_masks() protocol ---------------------------------------------------
def test_deepcopy_and_pickle_carry_their_own_hooks():
    net = _net()
    masks = _masks(net)
    apply_masks(net, masks)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(net), torch.load(buffer, weights_only=False)):
        remove_masks(clone)
        assert all(v == 0 for v in _hooks(clone).values())
        assert _hooks(net)["0:forward_pre"] == 1 and set(get_masks(net)) == set(masks)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(2, 6))
    assert masked_nonzeros(net, masks) == dict.fromkeys(masks, 0)


def test_remove_some_masks_by_name_keeps_the_others_enforced():
    net = _net()
    masks = _masks(net)
    apply_masks(net, masks)
    before = _hooks(net)
    with pytest.raises(ValueError, match="'1.weight', which has no mask attached"):
        remove_masks(net, ["0.weight", "1.weight"])
    assert _hooks(net) == before and set(get_masks(net)) == set(masks)
    removed = remove_masks(net, ["2.weight"])
    assert list(removed) == ["2.weight"] and torch.equal(removed["2.weight"], masks["2.weight"])
    assert set(get_masks(net)) == {"0.weight", "4.weight"}
    assert _hooks(net)["2:forward_pre"] == _hooks(net)["2:state_dict_pre"] == _hooks(net)["2.weight:grad"] == 0
    with torch.no_grad():
        for n in masks:
            net.get_parameter(n).add_(1.0)
    F.cross_entropy(net(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
    assert masked_nonzeros(net, masks) == {"0.weight": 0, "2.weight": int((~masks["2.weight"]).sum()), "4.weight": 0}
    assert torch.count_nonzero(net[2].weight.grad[~masks["2.weight"]]) > 0
    # a layer switched to sparse execution: detached first, then its Parameter replaced by something else
    remove_masks(net, "4.weight")
    del net[4].weight
    net[4].register_buffer("weight", torch.zeros(3, 4))
    net(torch.randn(2, 6))
    assert set(get_masks(net)) == {"0.weight"}
    remove_masks(net)
    assert get_masks(net) == {} and all(v == 0 for v in _hooks(net).values())


class SparseLinear(nn.Module):
    """A layer that keeps its weight as values + mask (as a sparse-execution layer does): pruning_masks() protocol."""

    def __init__(self, weight, mask):
        super().__init__()
        self.values = nn.Parameter(weight[mask])
        self.register_buffer("mask", mask.clone())

    def pruning_masks(self):
        return {"weight": self.mask}

    def forward(self, x):
        w = torch.zeros(self.mask.shape).masked_scatter(self.mask, self.values)
        return x @ w.T


def test_modules_reporting_their_own_masks_appear_in_get_masks_and_the_report():
    net = _net()
    masks = _masks(net)
    apply_masks(net, masks)
    remove_masks(net, ["2.weight"])
    net[2] = SparseLinear(net[2].weight.detach(), masks["2.weight"])
    got = get_masks(net)
    assert list(got) == ["0.weight", "2.weight", "4.weight"]
    assert all(torch.equal(got[n], masks[n]) for n in masks)
    got["2.weight"].fill_(False)  # a copy
    assert bool(net[2].mask.any())
    report = sparsity_report(net)
    assert report.layers["2.weight"].kept == int(masks["2.weight"].sum()) and report.total == 30 + 20 + 12
    wrapped = nn.Sequential(net)
    assert set(get_masks(wrapped)) == {"0.0.weight", "0.2.weight", "0.4.weight"}
    enforce_masks_(net)  # the protocol module enforces itself: nothing to do for it

    class Bad(nn.Module):
        def pruning_masks(self):
            return {"weight": torch.ones(2)}

    with pytest.raises(TypeError, match=r"bad \(Bad\)\.pruning_masks\(\) must map attribute names to torch.bool"):
        get_masks(nn.ModuleDict({"bad": Bad()}))
