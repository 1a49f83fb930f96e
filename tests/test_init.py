"""Initializers: orthogonality against svdvals, norm preservation of circular convolutions, variances, per matrix
of each weight's layout (groups, depthwise, attention blocks); init_model_ writes the selection and nothing else."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.init import (
    calculate_fans,
    delta_orthogonal_,
    init_model_,
    init_tensor_,
    orthogonal_,
    variance_scaling_,
)
from lightning_prune_init.layouts import MatrixLayout, layout_of


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _circular_conv(x: torch.Tensor, w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Cross-correlation with circular padding that keeps the spatial size (any kernel size)."""
    pad: list[int] = []
    for k in reversed(w.shape[2:]):
        pad += [(k - 1) // 2, k - 1 - (k - 1) // 2]
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return conv(F.pad(x, pad, mode="circular"), w, groups=groups)


def _norm_ratios(w: torch.Tensor, spatial: tuple[int, ...], seed: int = 1, groups: int = 1) -> torch.Tensor:
    x = torch.randn((16, w.shape[1] * groups) + spatial, generator=_gen(seed), dtype=torch.float64)
    y = _circular_conv(x, w.double(), groups)
    return y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)


def _per_group_gram(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``W Wᵀ`` of each group's kernel reshaped to ``[c_out/g, c_in/g · prod(k)]``: ``[groups, c_out/g, c_out/g]``."""
    m = w.detach().double().reshape(groups, w.shape[0] // groups, -1)
    return m @ m.transpose(1, 2)


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


@pytest.mark.parametrize(
    ("shape", "spatial"), [((4, 8, 3, 3), (9, 9)), ((3, 16, 5, 5), (11, 11)), ((2, 6, 3), (13,)), ((4, 5, 1, 1), (7, 7))]
)
def test_block_orthogonal_more_inputs_than_outputs_has_orthonormal_rows(shape, spatial):
    # taps U M_a with M paraunitary at the c_in side: the zero-lag term Σ_a M_a M_aᵀ = I gives W Wᵀ = U Uᵀ = I
    w = orthogonal_(torch.empty(shape, dtype=torch.float64), gain=1.5, generator=_gen(4))
    gram = _per_group_gram(w, 1)[0]
    assert torch.max(torch.abs(gram - 1.5**2 * torch.eye(shape[0], dtype=torch.float64))) < 1e-12
    if math.prod(shape[2:]) > 1:  # spread over the taps like the c_in <= c_out construction, not a delta kernel
        centre = w[(slice(None), slice(None)) + tuple(k // 2 for k in shape[2:])]
        assert (w.norm() ** 2 - centre.norm() ** 2) > 0.3 * w.norm() ** 2
    # the circular convolution is a co-isometry: its adjoint (the transposed convolution) preserves norms
    y = torch.randn((8, shape[0]) + spatial, generator=_gen(5), dtype=torch.float64)
    x = torch.zeros((8, shape[1]) + spatial, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (_circular_conv(x, w) * y).sum().backward()  # x.grad = convᵀ y
    ratios = x.grad.flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
    assert torch.allclose(ratios, torch.full_like(ratios, 1.5), atol=1e-10)


def test_block_orthogonal_more_inputs_than_outputs_operator_singular_values_are_one():
    n = 8
    w = orthogonal_(torch.empty(3, 6, 3, 3, dtype=torch.float64), generator=_gen(9))
    padded = torch.zeros(3, 6, n, n, dtype=torch.float64)
    padded[:, :, :3, :3] = w
    sv = torch.linalg.svdvals(torch.fft.fft2(padded).permute(2, 3, 0, 1))  # [n, n, 3]: c_out per frequency
    assert torch.allclose(sv, torch.ones_like(sv), atol=1e-10)


# --- per group: grouped and depthwise convolutions --------------------------------------------------------------
@pytest.mark.parametrize(("c_in", "c_out", "groups"), [(8, 16, 2), (12, 12, 3), (6, 12, 6), (16, 4, 2), (12, 6, 3)])
@pytest.mark.parametrize("k", [1, 3])
def test_grouped_block_orthogonal_per_group(c_in, c_out, groups, k):
    conv = nn.Conv2d(c_in, c_out, k, groups=groups, bias=False)
    layout = layout_of(conv, "weight")
    w = orthogonal_(torch.empty(conv.weight.shape, dtype=torch.float64), layout=layout, generator=_gen(k))
    per_in, per_out = c_in // groups, c_out // groups
    if per_in <= per_out:  # each group is an isometry, so the whole convolution is one
        ratios = _norm_ratios(w, (7, 9), groups=groups)
        assert torch.max(torch.abs(ratios - 1)) < 1e-10
    else:
        gram = _per_group_gram(w, groups)
        assert torch.max(torch.abs(gram - torch.eye(per_out, dtype=torch.float64))) < 1e-12
    # the groups are independent draws
    first, second = w[:per_out], w[per_out : 2 * per_out]
    assert not torch.allclose(first, second)


def test_depthwise_orthogonal_is_one_signed_unit_tap_per_channel():
    conv = nn.Conv2d(64, 64, 5, padding=2, groups=64, bias=False)
    w = orthogonal_(conv.weight, layout=layout_of(conv, "weight"), generator=_gen(1)).detach()
    flat = w.reshape(64, 25)
    assert torch.equal(torch.count_nonzero(flat, dim=1), torch.ones(64, dtype=torch.long))
    assert torch.equal(flat.abs().sum(1), torch.ones(64))
    assert {-1.0, 1.0} == set(flat[flat != 0].tolist())  # random signs
    positions = flat.abs().argmax(1)
    assert len(set(positions.tolist())) > 3  # the tap moves (binomially) around the centre ...
    offsets = torch.stack([positions // 5 - 2, positions % 5 - 2]).abs().float()
    assert float(offsets.mean()) < 1.2  # ... and stays near it (E|offset| = 0.75 per dimension for 5 taps)
    ratios = _norm_ratios(w, (10, 10), groups=64)
    assert torch.max(torch.abs(ratios - 1)) < 1e-6  # power gain 1, where the old code gave about 1/64


def test_depthwise_with_channel_multiplier_is_an_isometry():
    conv = nn.Conv2d(8, 24, 3, groups=8, bias=False)  # each channel feeds 3 outputs
    w = orthogonal_(conv.weight, layout=layout_of(conv, "weight"), generator=_gen(2)).detach()
    ratios = _norm_ratios(w, (9, 9), groups=8)
    assert torch.max(torch.abs(ratios - 1)) < 1e-5


@pytest.mark.parametrize(("c_in", "c_out", "groups"), [(32, 32, 32), (16, 8, 4), (8, 16, 4)])
def test_grouped_delta_orthogonal_centre_tap_per_group(c_in, c_out, groups):
    conv = nn.Conv2d(c_in, c_out, 3, groups=groups, bias=False)
    w = delta_orthogonal_(conv.weight, gain=2.0, layout=layout_of(conv, "weight"), generator=_gen(3)).detach()
    assert torch.count_nonzero(w) == torch.count_nonzero(w[:, :, 1, 1])
    per_in, per_out = c_in // groups, c_out // groups
    centres = w[:, :, 1, 1].double().reshape(groups, per_out, per_in)
    if per_in <= per_out:
        gram, n = centres.transpose(1, 2) @ centres, per_in
        ratios = _norm_ratios(w, (7, 7), groups=groups)
        assert torch.allclose(ratios, torch.full_like(ratios, 2.0), atol=1e-5)
    else:
        gram, n = centres @ centres.transpose(1, 2), per_out
    assert torch.max(torch.abs(gram - 4 * torch.eye(n, dtype=torch.float64))) < 1e-5
    if groups == c_in:  # depthwise: a centre tap of ±2 in every channel
        assert torch.equal(w[:, 0, 1, 1].abs(), torch.full((c_out,), 2.0))


def test_groups_one_layout_draws_what_the_default_draws():
    for fn, shape in [(orthogonal_, (8, 4, 3, 3)), (delta_orthogonal_, (4, 8, 3, 3)), (orthogonal_, (6, 10))]:
        layout = MatrixLayout("linear") if len(shape) == 2 else MatrixLayout("conv", 1, shape[2:])
        a = fn(torch.empty(shape), generator=_gen(6))
        b = fn(torch.empty(shape), layout=layout, generator=_gen(6))
        assert torch.equal(a, b)


def test_the_draws_of_earlier_versions_are_kept():
    # values drawn by the single-matrix code before per-layout initialization (float64, seed 0): the existing
    # cases (dense matrices, groups=1 convs) must draw the same numbers in the same order
    golden = {
        (orthogonal_, (6, 10)): ([-0.6098231939882754, -0.16449743021023874, 0.29977427455544425], 16.096536307371057),
        (orthogonal_, (10, 6)): ([-0.6098231939882754, 0.005396513927363034, -0.48995655226218404], 16.096536307371057),
        (orthogonal_, (8, 4, 3, 3)): ([0.1011544317686532, -0.1340088863160178, 0.01648672085086743], 23.92086169340828),
    }
    for (fn, shape), (first, total) in golden.items():
        w = fn(torch.empty(shape, dtype=torch.float64), generator=_gen(0))
        assert torch.allclose(w.reshape(-1)[:3], torch.tensor(first, dtype=torch.float64), atol=1e-12)
        assert abs(w.abs().sum().item() - total) < 1e-9
    w = delta_orthogonal_(torch.empty(4, 8, 3, 3, dtype=torch.float64), generator=_gen(0))
    expected = [-0.7094196131445469, -0.2714428123583861, -0.3978266145358814]
    assert torch.allclose(w[0, :3, 1, 1], torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    w = variance_scaling_(torch.empty(8, 4, 3, 3, dtype=torch.float64), "he", generator=_gen(0))
    expected = [-0.5445692837596683, -0.08797607169302811, -0.250036888998623]
    assert torch.allclose(w.reshape(-1)[:3], torch.tensor(expected, dtype=torch.float64), atol=1e-12)


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
    # per matrix: a conv group, a transformers Conv1D stored [in, out], one attention block
    assert calculate_fans(torch.empty(64, 4, 3, 3), MatrixLayout("conv", groups=8, kernel=(3, 3))) == (36, 72)
    assert calculate_fans(torch.empty(32, 1, 7, 7), MatrixLayout("conv", groups=32, kernel=(7, 7))) == (49, 49)
    assert calculate_fans(torch.empty(32, 128), MatrixLayout("transposed")) == (32, 128)
    assert calculate_fans(torch.empty(48, 16), MatrixLayout("blocks", groups=3)) == (16, 16)


def test_variance_scaling_fans_per_group():
    conv = nn.Conv2d(256, 512, 3, groups=128, bias=False)  # groups of 2 -> 4 channels: fans 18 and 36
    w = variance_scaling_(conv.weight, "glorot", layout=layout_of(conv, "weight"), generator=_gen()).detach()
    assert abs(w.var().item() / (2 / (18 + 36)) - 1) < 0.05  # torch's fan_out would count all 512 outputs


def test_layout_argument_is_checked():
    with pytest.raises(TypeError, match="`layout` must be a MatrixLayout"):
        orthogonal_(torch.empty(4, 4), layout="conv")
    with pytest.raises(ValueError, match="'vector'"):
        orthogonal_(torch.empty(4, 4), layout=MatrixLayout("vector"))
    with pytest.raises(ValueError, match="cannot be split into 3 groups"):
        delta_orthogonal_(torch.empty(8, 2, 3, 3), layout=MatrixLayout("conv", groups=3, kernel=(3, 3)))


# --- attention: q/k/v blocks -----------------------------------------------------------------------------------
def test_attention_in_proj_is_initialized_per_block():
    mha = nn.MultiheadAttention(16, 2)
    layout = layout_of(mha, "in_proj_weight")
    w = orthogonal_(mha.in_proj_weight, layout=layout, generator=_gen(1)).detach().double()
    for block in w.reshape(3, 16, 16):  # query, key and value maps each orthogonal
        assert torch.max(torch.abs(block @ block.T - torch.eye(16, dtype=torch.float64))) < 1e-6
    variance_scaling_(mha.in_proj_weight, "glorot", layout=layout, generator=_gen(2))
    assert calculate_fans(mha.in_proj_weight, layout) == (16, 16)


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


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def _net(c_mid: int = 16) -> _Net:
    torch.manual_seed(0)
    model = _Net(c_mid)
    with torch.no_grad():
        model.bn1.weight.uniform_()
        model.bn1.bias.uniform_()
    return model


@pytest.mark.parametrize("scheme", ["orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he"])
def test_init_model_every_scheme(scheme):
    model = _net()
    before = _state(model)
    ids = {n: id(p) for n, p in model.named_parameters()}
    assert init_model_(model, scheme, zero_biases=True, generator=_gen()) is model
    assert {n: id(p) for n, p in model.named_parameters()} == ids
    assert _changed(model, before) == {f"{layer}.{t}" for layer in ("conv1", "conv2", "fc") for t in ("weight", "bias")}
    for name in ("conv1.bias", "conv2.bias", "fc.bias"):
        assert torch.count_nonzero(model.get_parameter(name)) == 0
    fc = model.fc.weight.detach()
    if scheme.endswith("orthogonal"):
        assert torch.max(torch.abs(fc @ fc.T - torch.eye(10))) < 1e-5
        assert torch.max(torch.abs(_norm_ratios(model.conv2.weight.detach(), (6, 6)) - 1)) < 1e-4
        if scheme == "delta-orthogonal":
            assert torch.count_nonzero(model.conv2.weight) == torch.count_nonzero(model.conv2.weight[:, :, 1, 1])


def test_init_model_writes_only_the_selection_by_default():
    # zero_biases=False (default): the biases of the initialized layers are not selected, so they stay as they were
    model = _net()
    before = _state(model)
    init_model_(model, "orthogonal", generator=_gen())
    assert _changed(model, before) == {"conv1.weight", "conv2.weight", "fc.weight"}


def test_init_model_vs_he_variance_and_gain():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Conv2d(64, 128, 3))
    init_model_(model, "vs-he", gain=0.5, generator=_gen())
    assert abs(model[0].weight.var().item() / (0.25 * 2 / 1000) - 1) < 0.05
    assert abs(model[1].weight.var().item() / (0.25 * 2 / 576) - 1) < 0.05
    init_model_(model, "orthogonal", gain=2.0, generator=_gen())
    w = model[0].weight.detach()
    assert torch.max(torch.abs(w @ w.T - 4 * torch.eye(1000))) < 1e-4


def test_init_model_conv_with_more_inputs_than_outputs_gets_orthonormal_rows():
    # earlier versions refused 'orthogonal' for conv2 (8 -> 4 channels) and left the model as it was
    for scheme in ("orthogonal", "delta-orthogonal"):
        model = _net(c_mid=4)
        init_model_(model, scheme, generator=_gen())
        gram = _per_group_gram(model.conv2.weight, 1)[0]
        assert torch.max(torch.abs(gram - torch.eye(4, dtype=torch.float64))) < 1e-6


def test_init_model_refusal_leaves_model_untouched():
    model = _net()
    model.steps = nn.Parameter(torch.zeros(2, 2, dtype=torch.long), requires_grad=False)  # not floating point
    before = _state(model)
    with pytest.raises(TypeError, match="'steps' is not floating point"):
        init_model_(model, "orthogonal", parameters=["conv1.weight", "steps"], zero_biases=True)
    assert not _changed(model, before)


def test_init_model_takes_the_selection():
    model = _net()
    before = _state(model)
    selection = select_parameters(model, exclude="conv1.*")
    init_model_(model, "orthogonal", parameters=selection, generator=_gen())
    assert _changed(model, before) == {"conv2.weight", "fc.weight"}
    before = _state(model)
    init_model_(model, "vs-he", parameters="fc.*", generator=_gen())  # a glob is `include`; fc.bias is 1-D: skipped
    assert _changed(model, before) == {"fc.weight"}
    with pytest.raises(ValueError, match="selected on another module"):
        init_model_(_net(), "orthogonal", parameters=selection)
    with pytest.raises(ValueError, match="`scheme` must be one of"):
        init_model_(model, "kaiming")
    with pytest.raises(ValueError, match="gamma"):
        init_model_(model, "orthogonal", gamma=2.0)
    with pytest.raises(TypeError, match="zero_biases"):
        init_model_(model, "orthogonal", zero_biases=1)
    assert not _changed(model, before | {"fc.weight": model.fc.weight.detach()})


def test_init_model_one_dimensional_tensors():
    # a selected bias is zeroed (the papers' bias init); a selected normalization gain is left as it is, with a word
    model = _net()
    before = _state(model)
    init_model_(model, "vs-he", parameters=select_parameters(model, prune_biases=True), generator=_gen())
    assert _changed(model, before) == {f"{layer}.{t}" for layer in ("conv1", "conv2", "fc") for t in ("weight", "bias")}
    assert all(torch.count_nonzero(model.get_parameter(f"{n}.bias")) == 0 for n in ("conv1", "conv2", "fc"))
    before = _state(model)
    with pytest.warns(UserWarning, match="bn1.weight left as they are"):
        init_model_(model, "orthogonal", parameters=["bn1.weight", "bn1.bias", "fc.weight"], generator=_gen())
    assert _changed(model, before) == {"bn1.bias", "fc.weight"}
    assert torch.count_nonzero(model.bn1.bias) == 0


def test_init_model_attention_blocks_and_its_bias():
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    with torch.no_grad():
        layer.self_attn.in_proj_bias.fill_(0.5)
    before = _state(layer)
    init_model_(layer, "orthogonal", generator=_gen())
    assert torch.equal(layer.self_attn.in_proj_bias, before["self_attn.in_proj_bias"])
    for block in layer.self_attn.in_proj_weight.detach().reshape(3, 16, 16):
        assert torch.max(torch.abs(block @ block.T - torch.eye(16))) < 1e-5
    init_model_(layer, "orthogonal", zero_biases=True, generator=_gen())
    assert torch.count_nonzero(layer.self_attn.in_proj_bias) == 0


def test_init_tensor_dispatches_to_the_schemes():
    for scheme, fn, kwargs in [
        ("orthogonal", orthogonal_, {}),
        ("delta-orthogonal", delta_orthogonal_, {}),
        ("vs-glorot", variance_scaling_, {}),
    ]:
        a = init_tensor_(torch.empty(8, 4, 3, 3), scheme, generator=_gen(1))
        b = fn(torch.empty(8, 4, 3, 3), *(("glorot",) if fn is variance_scaling_ else ()), generator=_gen(1), **kwargs)
        assert torch.equal(a, b)
    a = init_tensor_(torch.empty(300, 200), "vs-lecun", gain=2.0, gamma=3.0, generator=_gen(2))
    assert abs(a.var().item() / (3.0 * 4.0 / 200) - 1) < 0.05
