"""Jacobian singular values: exact values against hand computations, estimates against exact values."""

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from lightning_prune_init.spectrum import END_TO_END, conv_singular_values_fft, jacobian_singular_values
from lightning_prune_init.spectrum.estimators import Gram, lanczos
from lightning_prune_init.spectrum.operators import MatrixOperator


def tanh_mlp(widths=(32, 48, 40, 10), seed=0, gain=1.2, bias=True):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b, bias=bias)
        nn.init.orthogonal_(lin.weight, gain=gain)
        if bias:
            nn.init.normal_(lin.bias, std=0.1)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def hand_layer_jacobians(model, x):
    """[B, out, in] Jacobians D_l W_l (tanh layers) and W_L (last layer), computed by hand."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    jacs, h = [], x
    for i, lin in enumerate(linears):
        pre = h @ lin.weight.T + lin.bias
        if i < len(linears) - 1:
            d = 1 - torch.tanh(pre) ** 2
            jacs.append(torch.diag_embed(d) @ lin.weight)
            h = torch.tanh(pre)
        else:
            jacs.append(lin.weight.expand(x.shape[0], -1, -1))
    return jacs


def test_layerwise_exact_equals_hand_computation_for_tanh_mlp():
    model = tanh_mlp()
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1)) * 1.5
    result = jacobian_singular_values(model, x, scope="layerwise", method="exact")
    assert list(result) == ["0", "2", "4"]
    with torch.no_grad():
        hand = hand_layer_jacobians(model, x)
        hand = [j.detach() for j in hand]
    for key, jac in zip(result, hand):
        expected = torch.linalg.svdvals(jac)
        stats = result[key]
        assert stats.method == "exact" and stats.values.shape == expected.shape
        assert stats.shape == tuple(jac.shape[1:])
        torch.testing.assert_close(stats.values, expected, atol=1e-5, rtol=0)
        flat = expected.double().flatten()
        assert stats.mean == pytest.approx(float(flat.mean()), abs=1e-6)
        assert stats.std == pytest.approx(float(flat.std(unbiased=False)), abs=1e-6)
        assert stats.max == pytest.approx(float(flat.max()), abs=1e-5)
        assert stats.min == pytest.approx(float(flat.min()), abs=1e-5)
        assert stats.cond == pytest.approx(float(flat.max() / flat.min()), rel=1e-4)
        assert stats.mean_sq == pytest.approx(float(flat.pow(2).mean()), rel=1e-5)


def test_end_to_end_exact_equals_svdvals_of_jacrev():
    model = tanh_mlp()
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    stats = jacobian_singular_values(model, x, scope="end_to_end", method="exact")[END_TO_END]
    with torch.no_grad():
        expected = torch.stack([torch.linalg.svdvals(jacrev(model)(xi)) for xi in x])
    torch.testing.assert_close(stats.values, expected, atol=1e-5, rtol=0)
    assert stats.shape == (10, 32) and stats.num_examples == 4


def test_weights_scope_is_data_free_and_reshapes_convs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    result = jacobian_singular_values(model, None, scope="weights", method="exact")
    assert list(result) == ["0", "3"]
    torch.testing.assert_close(result["0"].values[0], torch.linalg.svdvals(model[0].weight.detach().reshape(8, 27)))
    torch.testing.assert_close(result["3"].values[0], torch.linalg.svdvals(model[3].weight.detach()))
    assert result["0"].shape == (8, 27)


def test_layers_patterns_select_reported_layers_and_next_layer_is_unchanged():
    model = tanh_mlp()
    x = torch.randn(3, 32)
    everything = jacobian_singular_values(model, x, method="exact")
    only = jacobian_singular_values(model, x, method="exact", layers="2")
    assert list(only) == ["2"]
    torch.testing.assert_close(only["2"].values, everything["2"].values)
    with pytest.raises(ValueError, match="`layers` pattern 'nope'"):
        jacobian_singular_values(model, x, layers="nope")


class Branchy(nn.Module):
    """``head(relu(a(x)) + s(x))`` with a dead auxiliary branch ``aux`` executed between ``a`` and ``s``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(6, 7)
        self.aux = nn.Linear(6, 2)
        self.s = nn.Linear(6, 7)
        self.head = nn.Linear(7, 3)
        self.unused = None

    def forward(self, x):
        main = torch.relu(self.a(x))
        self.unused = self.aux(x)  # computed, reaches nothing
        return self.head(main + self.s(x))


def test_layerwise_follows_the_real_graph_and_skips_pairs_without_a_path():
    model = Branchy()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    result = jacobian_singular_values(model, x, scope="layerwise", method="exact")
    assert list(result) == ["a", "s", "head"]  # "aux" has no path to anything: skipped, not faked
    with torch.no_grad():
        d = (model.a(x) > 0).float()
        a_jac = torch.diag_embed(d) @ model.a.weight  # a -> head's input, through relu and the sum
        s_jac = model.s.weight.expand(4, -1, -1)  # s -> head's input, through the sum only
    torch.testing.assert_close(result["a"].values, torch.linalg.svdvals(a_jac), atol=1e-5, rtol=0)
    torch.testing.assert_close(result["s"].values, torch.linalg.svdvals(s_jac), atol=1e-5, rtol=0)
    torch.testing.assert_close(result["head"].values[0], torch.linalg.svdvals(model.head.weight.detach()))


def _rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("init", ["orthogonal", "gaussian"])
def test_estimates_agree_with_exact_values_on_mlp_layers(init):
    torch.manual_seed(0)
    width = 192
    model = nn.Sequential(
        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, 10),
    )
    if init == "orthogonal":
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=1.3)
    x = torch.randn(8, width, generator=torch.Generator().manual_seed(5)) * 1.5
    exact = jacobian_singular_values(model, x, method="exact")
    estimate = jacobian_singular_values(model, x, method="estimate", seed=0)
    power_only = jacobian_singular_values(model, x, method="estimate", lanczos_steps=0, power_iters=30, seed=1)
    assert list(exact) == list(estimate) == list(power_only)
    for key in ["0", "2", "4"]:  # 192 x 192 layer Jacobians
        e, s, p = exact[key], estimate[key], power_only[key]
        assert s.method == "estimate" and s.values is None
        assert _rel(s.max, e.max) < 0.02, key
        assert s.max <= e.max * (1 + 1e-5), key  # Rayleigh quotients: never above the true value
        assert _rel(s.mean_sq, e.mean_sq) < 0.05, key
        assert _rel(s.mean, e.mean) < 0.05, key  # stochastic Lanczos quadrature
        assert s.min >= e.min * (1 - 1e-4), key  # the smallest Ritz value bounds the true minimum from above
        assert _rel(p.max, e.max) < 0.02, key  # power iteration alone
        assert p.max <= e.max * (1 + 1e-5), key
        assert _rel(p.mean_sq, e.mean_sq) < 0.05, key  # Hutchinson alone
    # 10 x 192: fewer dimensions on one side than Lanczos steps, so "estimate" forms it: exact values
    assert estimate["6"].method == "exact"
    torch.testing.assert_close(estimate["6"].values, exact["6"].values)
    e2e_exact = jacobian_singular_values(model, x, scope="end_to_end", method="exact")[END_TO_END]
    e2e_est = jacobian_singular_values(model, x, scope="end_to_end", method="estimate", lanczos_steps=4)[END_TO_END]
    assert e2e_est.method == "estimate"  # 10 logits > 4 Lanczos steps: estimated
    assert _rel(e2e_est.max, e2e_exact.max) < 0.02
    assert _rel(e2e_est.mean_sq, e2e_exact.mean_sq) < 0.05


def test_estimate_on_a_conv_layer_agrees_with_exact_values():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten())
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    exact = jacobian_singular_values(model, x, method="exact")
    estimate = jacobian_singular_values(model, x, method="estimate")
    assert exact["0"].shape == (512, 256)
    for key in exact:
        assert _rel(estimate[key].max, exact[key].max) < 0.02, key
        assert _rel(estimate[key].mean_sq, exact[key].mean_sq) < 0.05, key


def circular_conv(c_in, c_out, seed):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular", bias=False)


def test_fft_method_equals_exact_values_of_a_circular_conv():
    conv = circular_conv(3, 5, seed=2)
    x = torch.randn(2, 3, 6, 6)
    exact = jacobian_singular_values(nn.Sequential(conv), x, scope="end_to_end", method="exact")[END_TO_END]
    fft = conv_singular_values_fft(conv.weight, (6, 6))
    assert fft.shape == (6 * 6 * 3,)
    for row in exact.values:  # a linear operator: the same values for every example
        torch.testing.assert_close(row, fft, atol=1e-5, rtol=1e-5)


def test_estimated_largest_value_of_a_circular_conv_agrees_with_fft():
    conv = circular_conv(16, 16, seed=3)
    x = torch.randn(2, 16, 16, 16)  # a 4096 x 4096 operator: estimated, not formed
    stats = jacobian_singular_values(nn.Sequential(conv), x, scope="layerwise", method="auto")["0"]
    assert stats.method == "estimate"
    fft = conv_singular_values_fft(conv.weight, (16, 16))
    assert _rel(stats.max, float(fft[0])) < 0.02
    assert _rel(stats.mean_sq, float(fft.pow(2).mean())) < 0.05


def test_fft_method_rejects_bad_input():
    with pytest.raises(ValueError, match="`weight`"):
        conv_singular_values_fft(torch.zeros(3, 3), (4, 4))
    with pytest.raises(ValueError, match="`input_size`"):
        conv_singular_values_fft(torch.zeros(2, 2, 5, 5), (4, 4))


def test_auto_picks_exact_for_small_and_estimate_for_large_jacobians():
    model = tanh_mlp()
    x = torch.randn(2, 32)
    small = jacobian_singular_values(model, x, method="auto")
    assert {s.method for s in small.values()} == {"exact"}
    large = jacobian_singular_values(model, x, method="auto", max_exact_dim=16)
    assert large["0"].method == "estimate" and large["4"].method == "exact"  # min(10, 40) <= 16


def test_estimate_without_lanczos_reports_only_max_and_mean_sq():
    model = tanh_mlp(widths=(64, 64, 10))
    stats = jacobian_singular_values(model, torch.randn(2, 64), method="estimate", lanczos_steps=0)["0"]
    assert math.isnan(stats.mean) and math.isnan(stats.min) and math.isnan(stats.cond)
    assert set(stats.scalars()) == {"max", "mean_sq"}


def test_no_side_effects_on_the_model_or_the_rng():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(64, 3)
    )
    model.train()
    model[3].eval()  # a mixed-mode model: each module's mode must come back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 2, 4, 4)
    rng = torch.get_rng_state()
    for scope in ("weights", "layerwise", "end_to_end"):
        for method in ("exact", "estimate"):
            jacobian_singular_values(model, x, scope=scope, method=method)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # incl. BN running stats
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model] == [True, True, True, False, True, True]


def test_estimates_are_reproducible_for_a_seed():
    model = tanh_mlp(widths=(80, 80, 10))
    x = torch.randn(2, 80)
    a = jacobian_singular_values(model, x, method="estimate", seed=7)["0"]
    b = jacobian_singular_values(model, x, method="estimate", seed=7)["0"]
    assert (a.max, a.mean_sq, a.mean) == (b.max, b.mean_sq, b.mean)


def test_argument_errors_name_the_argument():
    model = tanh_mlp()
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match="`scope`"):
        jacobian_singular_values(model, x, scope="global")
    with pytest.raises(ValueError, match="`method`"):
        jacobian_singular_values(model, x, method="svd")
    with pytest.raises(TypeError, match="`inputs`"):
        jacobian_singular_values(model, None, scope="layerwise")
    with pytest.raises(ValueError, match="`power_iters`"):
        jacobian_singular_values(model, x, power_iters=0)
    with pytest.raises(TypeError, match="`model`"):
        jacobian_singular_values("model", x)
    with pytest.raises(TypeError, match="forward_fn"):  # an output holding no tensor
        jacobian_singular_values(model, x, scope="end_to_end", forward_fn=lambda m, inp: None)
    with pytest.raises(ValueError, match="`layers`"):
        jacobian_singular_values(model, x, layers="nope")
    with pytest.raises(TypeError, match="`inputs`"):
        jacobian_singular_values(model, [x], scope="end_to_end")
    with pytest.raises(ValueError, match="`input_key`"):
        jacobian_singular_values(model, {"x": x}, scope="end_to_end", input_key="y")


def test_lanczos_over_the_whole_space_recovers_the_spectrum_even_when_rank_deficient():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 9, generator=g, dtype=torch.float64)
    a[:, :3] = 0  # rank 6: Lanczos breaks down after 6 steps and must restart orthogonally
    gram = Gram(MatrixOperator(a))
    assert gram.d == 9  # Aᵀ A, the smaller side
    res = lanczos(gram, 9, g)
    expected = torch.linalg.eigvalsh(a.T @ a).clamp_min(0)
    torch.testing.assert_close(res.ritz[0], expected, atol=1e-8, rtol=1e-8)
    assert float(res.weights.sum()) == pytest.approx(1.0)


def test_estimate_on_a_pruned_layer_with_dead_units():
    torch.manual_seed(0)
    layer = nn.Linear(200, 180, bias=False)
    with torch.no_grad():
        layer.weight[:40] = 0  # 40 dead output units: 40 zero singular values
        layer.weight.mul_(torch.rand_like(layer.weight) > 0.7)  # 70 % sparsity
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(180, 10))
    x = torch.randn(4, 200)
    exact = jacobian_singular_values(model, x, method="exact", layers="0")["0"]
    est = jacobian_singular_values(model, x, method="estimate", layers="0")["0"]
    assert exact.min == 0.0 and "cond" not in exact.scalars()  # inf is not reported
    assert _rel(est.max, exact.max) < 0.02
    assert _rel(est.mean_sq, exact.mean_sq) < 0.05
    assert _rel(est.mean, exact.mean) < 0.05
