"""Every registered criterion against a hand computation; the registry; SynFlow versus SNIP on layer collapse."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.scoring import (
    CRITERIA,
    ScoringContext,
    ScoringInputError,
    connection_sensitivity,
    criterion_masks,
    criterion_needs_data,
    exponential_schedule,
    get_criterion,
    register_criterion,
)
from lightning_prune_init.scoring.rounds import iterate_rounds
from lightning_prune_init.selection import find_collapse, keep_count, select_masks

from tests.helpers import Classifier, conv_bn_net, reference_keep


@pytest.fixture(autouse=True)
def one_thread():
    """SynFlow runs thousands of small ops; with 2 threads on 2 shared cores each parallel region can wait for a
    busy core (seen: 3 s -> 500 s for the VGG test). One thread keeps the timing stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batches(shape, n=2, size=16, seed=1, classes=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


def _tanh_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _weights(net):
    return {n: p for n, p in net.named_parameters() if p.dim() > 1}


def _score(name, net, batches=None, **context):
    """The registered criterion ``name`` on the default selection, with a context of ``context`` (options=...)."""
    return CRITERIA[name](net, batches, select_parameters(net), ScoringContext(**context))


# --- registry --------------------------------------------------------------------------------------------
def test_registry_names_lookup_and_errors():
    assert set(CRITERIA) == {"snip", "grasp", "synflow", "magnitude", "random", "iterative_snip"}
    assert get_criterion("synflow") is CRITERIA["synflow"]
    assert not criterion_needs_data("synflow") and not criterion_needs_data("random")
    assert criterion_needs_data("snip") and criterion_needs_data("grasp")
    assert CRITERIA["synflow"].iterative and CRITERIA["iterative_snip"].iterative and not CRITERIA["snip"].iterative
    with pytest.raises(ValueError, match="unknown `criterion` 'snipp'.*'grasp'"):
        get_criterion("snipp")
    with pytest.raises(ValueError, match="cannot be imported"):
        get_criterion("no_such_module.criterion")
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("snip")(lambda *a, **k: {})
    with pytest.raises(ValueError, match="without dots"):
        register_criterion("my.snip")


def test_snip_entry_is_connection_sensitivity():
    net = _tanh_mlp()
    batches = _batches((6,))
    got = _score("snip", net, batches, sparsity=0.5)
    expected = connection_sensitivity(net, batches)
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)


def half_magnitude(model, batches, parameters, context):
    """A user criterion, found by import path as YAML would give it."""
    return {n: p.detach().abs() / 2 for n, p in parameters.items()}


def test_user_criterion_by_import_path_and_by_registration():
    net = _tanh_mlp()
    scores, masks = criterion_masks(net, None, criterion="tests.test_criteria.half_magnitude", sparsity=0.5)
    assert all(torch.equal(scores[n], p.detach().abs() / 2) for n, p in _weights(net).items())
    assert all(torch.equal(masks[n], m) for n, m in select_masks(scores, 0.5).items())
    register_criterion("half_magnitude_test", needs_data=False)(half_magnitude)
    try:
        assert get_criterion("half_magnitude_test") is half_magnitude
        assert not criterion_needs_data("half_magnitude_test")
    finally:
        CRITERIA.pop("half_magnitude_test")


def test_selection_arguments_checked_before_scoring():
    calls = []

    def spy(model, batches, parameters, context):
        calls.append(context)
        return {}

    with pytest.raises(ValueError, match="sparsity"):
        criterion_masks(_tanh_mlp(), None, criterion=spy, sparsity=1.0)
    with pytest.raises(ValueError, match="min_density"):
        criterion_masks(_tanh_mlp(), None, criterion=spy, sparsity=0.5, min_density=2.0)
    assert calls == []


# --- magnitude, random ------------------------------------------------------------------------------------
def test_magnitude_is_absolute_weight():
    net = _tanh_mlp()
    scores = _score("magnitude", net)
    assert scores.keys() == _weights(net).keys()
    assert all(torch.equal(scores[n], p.detach().abs()) for n, p in _weights(net).items())


def test_random_scores_come_from_the_generator_only():
    net = _tanh_mlp()
    torch.manual_seed(123)
    a = _score("random", net, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    hand = {n: torch.rand(p.shape, generator=g, dtype=torch.float64) for n, p in _weights(net).items()}
    assert all(torch.equal(a[n], hand[n]) for n in hand)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    default = _score("random", net)  # no generator: a fresh one seeded with 0
    assert torch.equal(torch.rand(3), before)
    seed0 = _score("random", net, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(default[n], seed0[n]) for n in default)
    assert not torch.equal(seed0["0.weight"], a["0.weight"])


# --- GraSP -------------------------------------------------------------------------------------------------
def _grasp_hand(net, batches, temperature):
    """θ⊙(H g) with g and H (the full Hessian matrix, torch.func.hessian) of the tempered loss, in float64."""
    ref = copy.deepcopy(net).double().eval()
    params = {n: p.detach().double() for n, p in ref.named_parameters()}
    names = list(_weights(ref))
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].reshape(-1) for n in names])

    def loss(flat, x, y):
        p = dict(params)
        for n, chunk in zip(names, flat.split(sizes)):
            p[n] = chunk.view_as(params[n])
        return F.cross_entropy(functional_call(ref, p, (x.double(),)) / temperature, y)

    g = sum(torch.func.grad(loss)(flat0, x, y) for x, y in batches)
    hessian = sum(torch.func.hessian(loss)(flat0, x, y) for x, y in batches)
    theta_hg = flat0 * (hessian @ g)
    return {n: t.view_as(params[n]) for n, t in zip(names, theta_hg.split(sizes))}


@pytest.mark.parametrize("temperature", [200.0, 1.0])
def test_grasp_equals_hessian_gradient_product_by_hand(temperature):
    net = _tanh_mlp()
    batches = _batches((6,))
    scores = _score("grasp", net, batches, options={"temperature": temperature})
    hand = _grasp_hand(net, batches, temperature)
    lowest = min(float(t.min()) for t in hand.values())
    scale = max(float(t.abs().max()) for t in hand.values())
    for n in hand:
        assert scores[n].dtype == torch.float64
        torch.testing.assert_close(scores[n], hand[n] - lowest, rtol=1e-4, atol=1e-5 * scale)
    assert min(float(s.min()) for s in scores.values()) == 0.0

    # sign: GraSP removes the largest S = -θ⊙Hg, so the kept entries are those of lowest S
    s_flat = -torch.cat([hand[n].reshape(-1) for n in hand])
    k = keep_count(s_flat.numel(), 0.7)
    masks = select_masks(scores, 0.7, on_layer_collapse="ignore")
    kept = torch.cat([masks[n].reshape(-1) for n in hand])
    assert torch.equal(kept.nonzero().reshape(-1), s_flat.argsort()[:k].sort().values)


def test_grasp_reduce_fn_sums_gradient_and_products_over_ranks():
    net = _tanh_mlp()
    batches = _batches((6,))
    alone = _score("grasp", net, batches)
    # two ranks holding the same batches: g doubles, so each rank's Hg doubles, and the sum over ranks doubles again
    both = _score("grasp", net, batches, reduce_fn=lambda t: 2 * t)
    assert all(torch.equal(both[n], 4 * alone[n]) for n in alone)


def test_grasp_leaves_no_trace_on_a_batch_norm_net():
    torch.manual_seed(0)
    net = conv_bn_net().train()
    before = copy.deepcopy(net.state_dict())
    _score("grasp", net, [(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,)))])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.training


# --- SynFlow ------------------------------------------------------------------------------------------------
def _linear3():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 5, bias=False), nn.Linear(5, 2, bias=False))


def _synflow_hand(weights: list, alive: list) -> list:
    """Score of W_l[i, j] = (1ᵀ|W_L|⋯|W_l+1|)_i · |W_l|_ij · (|W_l-1|⋯|W_1| 1)_j, pruned entries 0."""
    a = [w.detach().abs().double() * m for w, m in zip(weights, alive)]
    out = []
    for layer in range(len(a)):
        right = torch.ones(a[0].shape[1], dtype=torch.float64)
        for w in a[:layer]:
            right = w @ right
        left = torch.ones(a[-1].shape[0], dtype=torch.float64)
        for w in reversed(a[layer + 1 :]):
            left = left @ w
        out.append(left[:, None] * a[layer] * right[None, :])
    return out


def test_synflow_scores_equal_the_product_formula_on_a_linear_net():
    net = _linear3()
    weights = list(_weights(net).values())
    scores = _score("synflow", net, sparsity=0.5, options={"rounds": 1, "input_shape": (3,)})
    hand = _synflow_hand(weights, [torch.ones_like(w, dtype=torch.bool) for w in weights])
    a1, a2, a3 = (w.detach().abs().double() for w in weights)
    flow = float(torch.ones(2, dtype=torch.float64) @ a3 @ a2 @ a1 @ torch.ones(3, dtype=torch.float64))
    for got, expected in zip(scores.values(), hand):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
        # conservation of synaptic flow: every layer's scores sum to R = 1ᵀ|W3||W2||W1|1
        assert float(expected.sum()) == pytest.approx(flow, rel=1e-12)


@pytest.mark.parametrize("sparsity, rounds", [(0.8, 3), (0.9, 5)])
def test_synflow_rounds_follow_the_exponential_schedule_and_scores_reproduce_the_mask(sparsity, rounds):
    net = _linear3()
    weights = list(_weights(net).values())
    names = list(_weights(net))
    alive = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    total = sum(w.numel() for w in weights)
    for k in range(1, rounds + 1):
        round_sparsity = sparsity if k == rounds else 1 - (1 - sparsity) ** (k / rounds)
        hand = dict(zip(names, _synflow_hand(weights, alive)))
        keep = reference_keep(hand, eligible=dict(zip(names, alive)), k=keep_count(total, round_sparsity))
        alive = [keep[n] for n in names]
    scores = _score("synflow", net, sparsity=sparsity, options={"rounds": rounds, "input_shape": (3,)})
    masks = select_masks(scores, sparsity, on_layer_collapse="ignore")
    for n, a in zip(names, alive):
        assert torch.equal(masks[n], a), n
    # kept: strictly positive; pruned before the last round: exactly 0 (so never below a kept entry)
    assert all(bool((scores[n][masks[n]] > 0).all()) for n in names)
    assert sum(int((scores[n] == 0).sum()) for n in names) == total - keep_count(total, 1 - (1 - sparsity) ** ((rounds - 1) / rounds))
    assert sum(int(m.sum()) for m in masks.values()) == keep_count(total, sparsity)


def test_exponential_schedule():
    assert exponential_schedule(0.99, 2) == [pytest.approx(0.9), 0.99]
    assert exponential_schedule(0.9, 1) == [0.9]
    with pytest.raises(ValueError, match="rounds"):
        exponential_schedule(0.9, 0)


def test_synflow_is_data_free_leaves_no_trace_and_finds_the_input_shape():
    torch.manual_seed(0)
    model = Classifier(net=conv_bn_net(), shape=(1, 12, 12)).train()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    from_example = _score("synflow", model, sparsity=0.9, options={"rounds": 3})  # shape from example_input_array
    given = _score("synflow", model, sparsity=0.9, options={"rounds": 3, "input_shape": (1, 12, 12)})
    from_batch = _score("synflow", model, [torch.zeros(4, 1, 12, 12)], sparsity=0.9, options={"rounds": 3})
    assert all(torch.equal(from_example[n], given[n]) and torch.equal(from_batch[n], given[n]) for n in given)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics included
    assert all(p.grad is None for p in model.parameters()) and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match="needs `sparsity`"):
        _score("synflow", model)


def test_synflow_float32_overflow_is_reported():
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(64, 64, bias=False) for _ in range(30)])
    with torch.no_grad():
        for m in net:
            m.weight.fill_(1.0)
    with pytest.raises(ValueError, match="overflowed"):
        _score("synflow", net, sparsity=0.5, options={"rounds": 1, "input_shape": (64,), "dtype": "float32"})
    assert _score("synflow", net, sparsity=0.5, options={"rounds": 1, "input_shape": (64,)})  # float64: 64^31 fits


class _Scaled(nn.Module):
    def __init__(self, factor, as_dict=False):
        super().__init__()
        self.fc, self.factor, self.as_dict = nn.Linear(3, 2, bias=False), factor, as_dict

    def forward(self, x):
        out = self.fc(x) * self.factor
        return {"out": out} if self.as_dict else out


def test_synflow_refuses_a_flow_it_cannot_use():
    with pytest.raises(ValueError, match="does not depend on the selected tensors"):
        _score("synflow", _Scaled(0.0), sparsity=0.5, options={"rounds": 1, "input_shape": (3,)})
    with pytest.raises(ScoringInputError, match="returning a tensor or an output with `.logits`, got dict"):
        _score("synflow", _Scaled(1.0, as_dict=True), sparsity=0.5, options={"rounds": 1, "input_shape": (3,)})
    with pytest.raises(ScoringInputError, match="needs the shape of one input"):
        _score("synflow", _Scaled(1.0), sparsity=0.5, options={"rounds": 1})


def _vgg16_narrow():
    """VGG-16's layout (13 convs with batch norm, five pools, one linear) at 1/8 width: 8 ... 64 channels."""
    torch.manual_seed(0)
    layers, c = [], 3
    for w in [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"]:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, 10))


@pytest.mark.slow
def test_synflow_avoids_the_layer_collapse_of_global_snip():
    """On this net (PyTorch's default init, 230,680 weights) global SNIP does *not* collapse a layer at 99%
    sparsity, only beyond: at 99.8% it prunes at least one layer entirely (which ones depends on the weights and
    the batch: three of the 64-channel convs here; in other draws the first conv, or one deep conv).
    SynFlow keeps every layer alive at both sparsities; it leaves many dead output channels in the deep layers
    (its near-constant count of kept weights per layer is spread over few channels)."""
    net = _vgg16_narrow()
    batches = _batches((3, 32, 32), n=1, size=64, classes=10)
    for sparsity, snip_collapses in [(0.99, False), (0.998, True)]:
        _, snip = criterion_masks(net, batches, criterion="snip", sparsity=sparsity, on_layer_collapse="ignore")
        assert bool(find_collapse(snip).pruned_entirely) == snip_collapses
        _, synflow = criterion_masks(net, None, criterion="synflow", sparsity=sparsity, on_layer_collapse="ignore",
                                     criterion_options={"input_shape": (3, 32, 32)})
        assert find_collapse(synflow).pruned_entirely == []
        assert all(int(m.sum()) > 0 for m in synflow.values())
    assert find_collapse(snip).pruned_entirely == ["30.weight", "34.weight", "37.weight"]


# --- iterative SNIP -----------------------------------------------------------------------------------------
def test_iterative_snip_with_one_round_is_snip():
    net = _tanh_mlp()
    batches = _batches((6,))
    _, once = criterion_masks(net, batches, criterion="iterative_snip", sparsity=0.6, on_layer_collapse="ignore",
                              criterion_options={"rounds": 1})
    snip = select_masks(connection_sensitivity(net, batches), 0.6, on_layer_collapse="ignore")
    assert all(torch.equal(once[n], snip[n]) for n in snip)


def test_iterative_snip_equals_rounds_by_hand_and_restores_the_weights():
    net = _tanh_mlp()
    batches = _batches((6,), n=3)
    before = copy.deepcopy(net.state_dict())
    sparsity, rounds = 0.75, 3
    ref = copy.deepcopy(net)
    names = list(_weights(ref))
    total = sum(p.numel() for p in _weights(ref).values())
    alive = {n: torch.ones_like(p, dtype=torch.bool) for n, p in _weights(ref).items()}
    history = []
    for k in range(1, rounds + 1):
        round_sparsity = sparsity if k == rounds else 1 - (1 - sparsity) ** (k / rounds)
        raw = connection_sensitivity(ref, batches, normalize=False)
        alive = reference_keep(raw, eligible=alive, k=keep_count(total, round_sparsity))
        history.append(alive)
        with torch.no_grad():
            for n in names:
                _weights(ref)[n].mul_(alive[n])
    scores, masks = criterion_masks(net, batches, criterion="iterative_snip", sparsity=sparsity,
                                    on_layer_collapse="ignore", criterion_options={"rounds": rounds})
    assert all(torch.equal(masks[n], alive[n]) for n in names)
    assert all(bool((history[0][n] | ~masks[n]).all()) for n in names)  # nothing pruned comes back
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("invert", [False, True])
def test_iterated_rounds_never_reselect_pruned_entries_at_zero_ties(invert):
    """All scores 0 in every round: ties everywhere, and still each round's mask lies inside the previous one."""
    seen = []

    def zero_scores(alive):
        seen.append(alive)
        return {"a": torch.zeros(10), "b": torch.zeros(3, 4)}

    scores = iterate_rounds(zero_scores, ScoringContext(sparsity=0.9, invert=invert), 4, "test")
    final = select_masks(scores, 0.9, invert=invert, on_layer_collapse="ignore")
    masks = seen[1:] + [final]
    for previous, current in zip(masks, masks[1:]):
        assert all(bool((previous[n] | ~current[n]).all()) for n in current)
    counts = [sum(int(m.sum()) for m in ms.values()) for ms in masks]
    assert counts == [keep_count(22, s) for s in exponential_schedule(0.9, 4)]


@pytest.mark.parametrize("criterion", ["synflow", "iterative_snip"])
@pytest.mark.parametrize("options", [dict(scope="layerwise"), dict(min_density=0.1), dict(invert=True)])
def test_iterative_scores_reproduce_the_mask_under_the_same_selection_options(criterion, options):
    net = _tanh_mlp()
    batches = _batches((6,))
    rounds = {"rounds": 4}
    scores = _score(criterion, net, batches, sparsity=0.8, options=rounds, **options)
    again = select_masks(scores, 0.8, on_layer_collapse="ignore", **options)
    _, masks = criterion_masks(net, batches, criterion=criterion, sparsity=0.8, on_layer_collapse="ignore",
                               criterion_options=rounds, **options)
    assert all(torch.equal(again[n], masks[n]) for n in masks)
    if "min_density" in options:
        assert all(int(m.sum()) >= -(-m.numel() // 10) for m in masks.values())
    if options.get("scope") == "layerwise":
        assert all(int(m.sum()) == keep_count(m.numel(), 0.8) for m in masks.values())
