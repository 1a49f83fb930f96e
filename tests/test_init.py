"""Initializers: orthogonality against svdvals, norm preservation of circular convolutions, variances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.init import (
    calculate_fans,
    delta_orthogonal_,
    init_model_,
    orthogonal_,
    variance_scaling_,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _circular_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cross-correlation with circular padding that keeps the spatial size (any kernel size)."""
    pad: list[int] = []
    for k in reversed(w.shape[2:]):
        pad += [(k - 1) // 2, k - 1 - (k - 1) // 2]
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return conv(F.pad(x, pad, mode="circular"), w)


def _norm_ratios(w: torch.Tensor, spatial: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    x = torch.randn((16, w.shape[1]) + spatial, generator=_gen(seed), dtype=torch.float64)
    y = _circular_conv(x, w.double())
    return y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)


# --- orthogonal_: linear ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (40, 40)])
def test_orthogonal_linear_is_orthogonal(shape):
    w = torch.empty(shape)
    out = orthogonal_(w, generator=_gen())
    assert out is w
    rows, cols = shape
    if rows <= cols:
        gram, eye = w @ w.T, torch.eye(rows)
    else:
        gram, eye = w.T @ w, torch.eye(cols)
    assert torch.max(torch.abs(gram - eye)) < 1e-5
    assert torch.allclose(torch.linalg.svdvals(w), torch.ones(min(shape)), atol=1e-5)


def test_orthogonal_gain_and_generator():
    w = orthogonal_(torch.empty(20, 20), gain=2.5, generator=_gen(3))
    assert torch.allclose(torch.linalg.svdvals(w), torch.full((20,), 2.5), atol=1e-5)
    again = orthogonal_(torch.empty(20, 20), gain=2.5, generator=_gen(3))
    other = orthogonal_(torch.empty(20, 20), gain=2.5, generator=_gen(4))
    assert torch.equal(w, again)
    assert not torch.allclose(w, other)


def test_orthogonal_float64_precision():
    w = orthogonal_(torch.empty(64, 64, dtype=torch.float64), generator=_gen())
    assert torch.max(torch.abs(w @ w.T - torch.eye(64, dtype=torch.float64))) < 1e-12


# --- orthogonal_: block-orthogonal conv ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 5])
def test_block_orthogonal_conv2d_preserves_norm(k):
    w = orthogonal_(torch.empty(8, 8, k, k), generator=_gen(k))
    ratios = _norm_ratios(w, (9, 11))
    assert torch.max(torch.abs(ratios - 1)) < 1e-4


def test_block_orthogonal_is_not_a_delta_kernel():
    w = orthogonal_(torch.empty(8, 8, 3, 3), generator=_gen())
    off_centre = w.clone()
    off_centre[:, :, 1, 1] = 0
    # Algorithm 1 spreads the energy over the taps; a delta kernel would have none off centre.
    assert off_centre.norm() > 0.3 * w.norm()


def test_block_orthogonal_operator_singular_values_are_one():
    # Exact singular values of the circular conv operator (Sedghi, Gupta & Long 2019): per frequency, the
    # c_out x c_in matrix of the kernel's 2-D DFT.
    n = 8
    w = orthogonal_(torch.empty(6, 6, 3, 3, dtype=torch.float64), generator=_gen(7))
    padded = torch.zeros(6, 6, n, n, dtype=torch.float64)
    padded[:, :, :3, :3] = w
    per_frequency = torch.fft.fft2(padded).permute(2, 3, 0, 1)
    sv = torch.linalg.svdvals(per_frequency)
    assert torch.allclose(sv, torch.ones_like(sv), atol=1e-10)


def test_block_orthogonal_c_in_less_than_c_out_is_an_isometry():
    w = orthogonal_(torch.empty(16, 8, 3, 3), gain=1.0, generator=_gen(2))
    ratios = _norm_ratios(w, (10, 10))
    assert torch.max(torch.abs(ratios - 1)) < 1e-4


def test_block_orthogonal_gain_scales_the_norm():
    w = orthogonal_(torch.empty(8, 8, 3, 3), gain=math.sqrt(2), generator=_gen(2))
    ratios = _norm_ratios(w, (10, 10))
    assert torch.allclose(ratios, torch.full_like(ratios, math.sqrt(2)), atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "spatial"), [((8, 8, 3), (13,)), ((8, 4, 3, 3, 3), (5, 6, 7)), ((6, 6, 4, 4), (9, 9))]
)
def test_block_orthogonal_other_kernels_preserve_norm(shape, spatial):
    w = orthogonal_(torch.empty(shape), generator=_gen(5))
    ratios = _norm_ratios(w, spatial)
    assert torch.max(torch.abs(ratios - 1)) < 1e-4


def test_block_orthogonal_rejects_more_inputs_than_outputs():
    w = torch.zeros(4, 8, 3, 3)
    with pytest.raises(ValueError, match="c_in=8 > c_out=4.*delta_orthogonal_"):
        orthogonal_(w)
    assert torch.count_nonzero(w) == 0


def test_orthogonal_rejects_vectors_and_non_float():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        orthogonal_(torch.empty(5))
    with pytest.raises(TypeError, match="floating-point"):
        orthogonal_(torch.empty(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="gain"):
        orthogonal_(torch.empty(3, 3), gain=0.0)


# --- delta_orthogonal_ -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("c_out", "c_in"), [(8, 8), (16, 8), (8, 16)])
def test_delta_orthogonal_centre_tap(c_out, c_in):
    w = torch.full((c_out, c_in, 3, 3), 7.0)
    assert delta_orthogonal_(w, gain=1.5, generator=_gen()) is w
    centre = w[:, :, 1, 1]
    if c_in <= c_out:
        gram, eye = centre.T @ centre, torch.eye(c_in)
    else:
        gram, eye = centre @ centre.T, torch.eye(c_out)
    assert torch.max(torch.abs(gram - 1.5**2 * eye)) < 1e-5
    rest = w.clone()
    rest[:, :, 1, 1] = 0
    assert torch.count_nonzero(rest) == 0
    if c_in <= c_out:
        ratios = _norm_ratios(w, (7, 7))
        assert torch.allclose(ratios, torch.full_like(ratios, 1.5), atol=1e-4)


def test_delta_orthogonal_3d_and_1d_centre():
    w = delta_orthogonal_(torch.empty(4, 4, 3, 5, 5), generator=_gen())
    assert torch.count_nonzero(w) == torch.count_nonzero(w[:, :, 1, 2, 2])
    assert torch.max(torch.abs(w[:, :, 1, 2, 2] @ w[:, :, 1, 2, 2].T - torch.eye(4))) < 1e-5
    v = delta_orthogonal_(torch.empty(4, 4, 5), generator=_gen())
    assert torch.count_nonzero(v) == torch.count_nonzero(v[:, :, 2])


# --- variance_scaling_ -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "formula"),
    [
        ("lecun", lambda fi, fo: 1 / fi),
        ("glorot", lambda fi, fo: 2 / (fi + fo)),
        ("he", lambda fi, fo: 2 / fi),
    ],
)
@pytest.mark.parametrize("shape", [(1000, 2000), (128, 64, 3, 3)])
def test_variance_scaling_matches_formula(mode, formula, shape):
    w = torch.empty(shape)
    assert variance_scaling_(w, mode, generator=_gen()) is w
    fan_in, fan_out = calculate_fans(w)
    expected = formula(fan_in, fan_out)
    assert abs(w.var().item() / expected - 1) < 0.05
    assert abs(w.mean().item()) < 0.05 * math.sqrt(expected)


def test_variance_scaling_gamma_multiplies_the_variance():
    w = variance_scaling_(torch.empty(1000, 1000), "lecun", gamma=3.0, generator=_gen())
    assert abs(w.var().item() / (3.0 / 1000) - 1) < 0.05


def test_variance_scaling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        variance_scaling_(torch.empty(3, 3), "xavier")
    with pytest.raises(ValueError, match="gamma"):
        variance_scaling_(torch.empty(3, 3), "he", gamma=-1.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        variance_scaling_(torch.empty(3), "he")


def test_calculate_fans():
    assert calculate_fans(torch.empty(10, 20)) == (20, 10)
    assert calculate_fans(torch.empty(64, 3, 3, 3)) == (27, 576)
    assert calculate_fans(torch.empty(8, 4, 5)) == (20, 40)


# --- init_model_ -----------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self, c_mid: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, c_mid, 3, padding=1)
        self.fc = nn.Linear(c_mid, 10)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("bn")}


@pytest.mark.parametrize("scheme", ["orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he"])
def test_init_model_every_scheme(scheme):
    torch.manual_seed(0)
    model = _Net()
    with torch.no_grad():
        model.bn1.weight.uniform_()
        model.bn1.bias.uniform_()
    bn_before = _bn_state(model)
    ids = {n: id(p) for n, p in model.named_parameters()}
    assert init_model_(model, scheme, generator=_gen()) is model
    assert {n: id(p) for n, p in model.named_parameters()} == ids
    for name in ("conv1.bias", "conv2.bias", "fc.bias"):
        assert torch.count_nonzero(model.get_parameter(name)) == 0
    for k, v in _bn_state(model).items():
        assert torch.equal(v, bn_before[k])
    fc = model.fc.weight.detach()
    if scheme.endswith("orthogonal"):
        assert torch.max(torch.abs(fc @ fc.T - torch.eye(10))) < 1e-5
        assert torch.max(torch.abs(_norm_ratios(model.conv2.weight.detach(), (6, 6)) - 1)) < 1e-4
        if scheme == "delta-orthogonal":
            assert torch.count_nonzero(model.conv2.weight) == torch.count_nonzero(model.conv2.weight[:, :, 1, 1])


def test_init_model_vs_he_variance_and_gain():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Conv2d(64, 128, 3))
    init_model_(model, "vs-he", gain=0.5, generator=_gen())
    assert abs(model[0].weight.var().item() / (0.25 * 2 / 1000) - 1) < 0.05
    assert abs(model[1].weight.var().item() / (0.25 * 2 / 576) - 1) < 0.05
    init_model_(model, "orthogonal", gain=2.0, generator=_gen())
    w = model[0].weight.detach()
    assert torch.max(torch.abs(w @ w.T - 4 * torch.eye(1000))) < 1e-4


def test_init_model_incompatible_conv_leaves_model_untouched():
    torch.manual_seed(0)
    model = _Net(c_mid=4)  # conv2: 8 -> 4 channels
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="conv2.weight.*delta-orthogonal"):
        init_model_(model, "orthogonal")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    init_model_(model, "delta-orthogonal")  # the alternative named by the message works
    centre = model.conv2.weight.detach()[:, :, 1, 1]
    assert torch.max(torch.abs(centre @ centre.T - torch.eye(4))) < 1e-5


def test_init_model_include_exclude_and_bad_arguments():
    torch.manual_seed(0)
    model = _Net()
    conv1 = model.conv1.weight.detach().clone()
    conv1_bias = model.conv1.bias.detach().clone()
    init_model_(model, "orthogonal", exclude="conv1.*")
    assert torch.equal(model.conv1.weight, conv1) and torch.equal(model.conv1.bias, conv1_bias)
    assert torch.count_nonzero(model.fc.bias) == 0
    with pytest.raises(ValueError, match="`scheme` must be one of"):
        init_model_(model, "kaiming")
    with pytest.raises(ValueError, match="gamma"):
        init_model_(model, "orthogonal", gamma=2.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init_model_(model, "vs-he", include="fc.bias")
