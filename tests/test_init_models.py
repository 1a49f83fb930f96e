"""init_model_ on the models people train (issue 11, acceptance 4): timm, torchvision and transformers.

After ``init_model_`` with ``"orthogonal"`` and with ``"delta-orthogonal"`` (no refusal), every stride-1 conv whose
groups have ``c_in/g <= c_out/g`` (depthwise included) has power gain ``E‖conv(x)‖² / E‖x‖²`` = 1 ± 10% on white
noise (its own padding and dilation, bias excluded, 32x32 inputs), and every conv with ``c_in/g > c_out/g`` has
``W Wᵀ = I`` within 1e-4 per group (kernel reshaped to ``[c_out/g, c_in/g · k · k]``). transformers ``Conv1D``
weights are drawn in their true ``[out, in]`` orientation, a tied embedding/head once, and nothing outside the
selection is written.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.init import init_model_, init_tensor_
from lightning_prune_init.parameters import select_parameters

from tests.zoo import (
    TIMM_MODELS,
    TORCHVISION_MODELS,
    timm_model,
    tiny_bert_classifier,
    tiny_gpt2,
    tiny_llama,
    torchvision_model,
)

pytestmark = pytest.mark.slow

SIZE = 32  # white-noise input size of the power-gain check
VISION = [("timm", n) for n in TIMM_MODELS] + [("torchvision", n) for n in TORCHVISION_MODELS]
#: models with depthwise convs: the check must cover some (earlier versions gave them power gain about 1/C)
DEPTHWISE = {"mobilenetv3_small_100", "convnext_atto", "efficientnet_b0", "mobilenet_v3_small"}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def power_gain(conv: nn.Conv2d, size: int = SIZE) -> float:
    """``E‖conv(x)‖² / E‖x‖²`` for white noise ``x`` (unit variance, ``[c_in, size, size]``), bias excluded, exactly.

    ``y[o, p] = Σ W[o, i, a] x[i, p·s + a·d - pad]`` over the taps that land inside the input: a sum of independent
    unit-variance terms, so ``E‖y‖² = Σ_{o, p} Σ_{valid i, a} W[o, i, a]²``, which is ``conv(ones, W²)`` with the
    module's own stride, padding and dilation (zero padding marks the invalid taps), summed.
    """
    assert conv.padding_mode == "zeros" and type(conv).forward is nn.Conv2d.forward, conv
    squares = conv.weight.detach().double().pow(2).sum(1, keepdim=True)  # [c_out, 1, k, k]: sum over the inputs
    ones = torch.ones(1, 1, size, size, dtype=torch.float64)
    out = F.conv2d(ones, squares, None, conv.stride, conv.padding, conv.dilation)
    return float(out.sum()) / (conv.in_channels * size * size)


def _conv_checks(model: nn.Module) -> tuple[dict[str, float], dict[str, float], int]:
    """``({conv: power gain}, {conv: max |W Wᵀ - I| over groups}, number of depthwise convs with a gain)``."""
    gains, rows, depthwise = {}, {}, 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        g = m.groups
        per_in, per_out = m.in_channels // g, m.out_channels // g
        if per_in > per_out:
            w = m.weight.detach().double().reshape(g, per_out, -1)
            eye = torch.eye(per_out, dtype=torch.float64)
            rows[name] = float((w @ w.transpose(1, 2) - eye).abs().max())
        elif all(s == 1 for s in m.stride):
            gains[name] = power_gain(m)
            depthwise += per_in == 1 and g > 1
    return gains, rows, depthwise


def _matrix_errors(model: nn.Module) -> dict[str, float]:
    """Every selected non-conv weight: max |G - I| of its smaller Gram, per matrix of its layout."""
    errors = {}
    for name, entry in select_parameters(model).entries.items():
        if entry.layout.kind == "conv":
            continue
        m = entry.layout.matrices(model.get_parameter(name).detach().double())
        gram = m @ m.transpose(1, 2) if m.shape[1] <= m.shape[2] else m.transpose(1, 2) @ m
        errors[name] = float((gram - torch.eye(gram.shape[-1], dtype=torch.float64)).abs().max())
    return errors


@pytest.fixture(scope="module")
def vision_model():
    cache: dict[tuple[str, str], nn.Module] = {}

    def get(family: str, name: str) -> nn.Module:
        if (family, name) not in cache:
            cache[family, name] = (timm_model if family == "timm" else torchvision_model)(name)
        return cache[family, name]

    return get


def test_power_gain_is_what_white_noise_measures():
    # the closed form against a Monte Carlo estimate through the module's own forward
    torch.manual_seed(0)
    convs = [
        nn.Conv2d(16, 16, 7, padding=3, groups=16, bias=False),  # depthwise
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False),
        nn.Conv2d(8, 8, 5, padding=0, bias=False),  # a 'valid' conv loses its borders
        nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False),
    ]
    x = torch.randn(64, 16, SIZE, SIZE, generator=_gen(1))
    with torch.no_grad():
        for conv in convs:
            xi = x[:, : conv.in_channels]
            measured = float(conv(xi).pow(2).sum() / xi.pow(2).sum())
            assert abs(measured / power_gain(conv) - 1) < 0.02, (conv, measured, power_gain(conv))


@pytest.mark.parametrize("scheme", ["orthogonal", "delta-orthogonal"])
@pytest.mark.parametrize(("family", "name"), VISION)
def test_vision_models_power_gain_one_or_orthonormal_rows(vision_model, family, name, scheme):
    model = vision_model(family, name)
    init_model_(model, scheme, generator=_gen(0))  # no refusal
    gains, rows, depthwise = _conv_checks(model)
    assert {n: g for n, g in gains.items() if abs(g - 1) > 0.1} == {}
    assert {n: e for n, e in rows.items() if e > 1e-4} == {}
    assert {n: e for n, e in _matrix_errors(model).items() if e > 1e-4} == {}
    if name in DEPTHWISE:
        assert depthwise > 0 and rows  # the depthwise and the c_in > c_out cases are both exercised
    if scheme == "delta-orthogonal":  # a centre tap: every 'same' conv is an exact isometry away from the borders
        assert all(g > 0.99 for g in gains.values())


def test_gpt2_conv1d_in_its_true_orientation():
    model = tiny_gpt2()
    selection = select_parameters(model)
    conv1d = [n for n, e in selection.entries.items() if e.layout.kind == "transposed"]
    assert len(conv1d) == 8  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj in each of 2 blocks
    init_model_(model, "vs-lecun", parameters=selection, generator=_gen(2))
    for name in conv1d:  # stored [in, out]: fan_in is the first dimension (earlier versions took the second)
        w = model.get_parameter(name).detach()
        assert abs(w.var().item() * w.shape[0] - 1) < 0.15, (name, tuple(w.shape), w.var().item())
    init_model_(model, "orthogonal", parameters=selection, generator=_gen(3))
    for name in conv1d:
        layout = selection.layout(name)
        maps = layout.matrices(model.get_parameter(name).detach().double())  # [1, out, in]
        out_features, in_features = maps.shape[1:]
        assert (out_features, in_features) == tuple(model.get_parameter(name).shape[::-1])
        gram = maps @ maps.transpose(1, 2) if out_features <= in_features else maps.transpose(1, 2) @ maps
        assert float((gram - torch.eye(gram.shape[-1], dtype=torch.float64)).abs().max()) < 1e-5


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_tied_embedding_and_head_are_initialized_once(build):
    model = build()
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embedding.weight
    selection = select_parameters(model)
    entry = selection.entry("lm_head.weight")
    assert entry.layout.kind == "linear" and entry.aliases  # one entry, read as the head's [vocab, width]
    init_model_(model, "orthogonal", parameters=selection, generator=_gen(4))
    assert head.weight is embedding.weight
    # replay: one draw per selected tensor, in selection order, reproduces every tensor (a second draw for the
    # tied tensor would overwrite it and shift every later draw)
    replay = _gen(4)
    for name, e in selection.entries.items():
        fresh = init_tensor_(torch.empty(e.shape), "orthogonal", layout=e.layout, generator=replay)
        assert torch.equal(model.get_parameter(name).detach(), fresh), name
    assert {n: e for n, e in _matrix_errors(model).items() if e > 1e-5} == {}


@pytest.mark.parametrize(
    "rule",
    [dict(include="*attention.self.*.weight"), dict(exclude=["classifier.*", "*.output.dense.weight"])],
    ids=["include", "exclude"],
)
@pytest.mark.parametrize("scheme", ["orthogonal", "vs-he"])
def test_narrow_selection_leaves_every_other_tensor_bit_identical(rule, scheme):
    model = tiny_bert_classifier()
    with torch.no_grad():  # BERT starts with zero biases: make every tensor distinct from what an init would write
        for p in model.parameters():
            p.add_(torch.rand(p.shape, generator=_gen(6)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    selection = select_parameters(model, **rule)
    init_model_(model, scheme, parameters=selection, generator=_gen(5))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(selection)  # biases of the selected layers, LayerNorms, embeddings, classifier: untouched
