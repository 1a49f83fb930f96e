"""The repair per matrix of each layout (grouped/depthwise convs, transformers Conv1D, attention blocks), against
hand computations, and on the one parameter selection only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_prune_init.isometry import (
    approximate_isometry,
    best_possible_error,
    orthogonality_error,
    orthogonality_errors,
    structural_rank,
)
from lightning_prune_init.layouts import layout_of
from lightning_prune_init.parameters import select_parameters
from tests import zoo


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_masks(model: nn.Module, names, density: float, seed: int) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    return {n: torch.rand(model.get_parameter(n).shape, generator=g) < density for n in names}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (each tied tensor under all its names) and buffer, cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _literal(m: torch.Tensor) -> float:
    """SPP's literal ``‖M Mᵀ − I‖_F`` of a 2-D matrix, in float64."""
    m = m.double()
    return torch.linalg.matrix_norm(m @ m.T - torch.eye(m.shape[0], dtype=m.dtype)).item()


def _dense_equivalent(w: torch.Tensor, groups: int) -> torch.Tensor:
    """The ungrouped conv weight ``[c_out, c_in, *k]`` computing what the grouped ``w`` computes (0 off the groups)."""
    c_out, per_group = w.shape[0], w.shape[1]
    out = w.new_zeros((c_out, per_group * groups, *w.shape[2:]))
    rows = c_out // groups
    for g in range(groups):
        out[g * rows : (g + 1) * rows, g * per_group : (g + 1) * per_group] = w[g * rows : (g + 1) * rows]
    return out


def _blocks_error(w: torch.Tensor, blocks: int) -> float:
    """``sqrt(Σ_b ‖B_b B_bᵀ − I‖²)`` over the row blocks of ``w``, in float64."""
    return math.sqrt(sum(_literal(b) ** 2 for b in w.chunk(blocks)))


# --- grouped and depthwise convolutions -------------------------------------------------------------------------
@pytest.mark.parametrize("c_in, c_out, k, groups", [(8, 12, 3, 4), (4, 8, 1, 2), (6, 6, 3, 6)])
def test_grouped_conv_error_is_the_error_of_its_dense_equivalent(c_in, c_out, k, groups):
    conv = nn.Conv2d(c_in, c_out, k, groups=groups, bias=False)
    g = _gen(0)
    w = torch.randn(conv.weight.shape, generator=g) * 0.3
    mask = torch.rand(w.shape, generator=g) < 0.5
    layout = layout_of(conv, "weight")
    dense, dense_mask = _dense_equivalent(w * mask, groups), _dense_equivalent(mask, groups)
    assert orthogonality_error(w, mask, layout=layout).item() == pytest.approx(
        _literal(dense.reshape(c_out, -1)), rel=1e-5
    )
    # the Gram of the dense equivalent is block diagonal, so its structural rank is the groups' ranks summed
    expected_best = math.sqrt(c_out - structural_rank(dense_mask.reshape(c_out, -1)))
    assert best_possible_error(w, mask, layout=layout) == pytest.approx(expected_best)
    assert best_possible_error(dense, dense_mask) == pytest.approx(expected_best)


def test_depthwise_conv_reaches_unit_filters():
    """Issue 11: a depthwise conv read as one [C, 9] matrix only reaches about 9/C; per channel it reaches 1."""
    model = nn.Sequential(nn.Conv2d(16, 16, 3, groups=16, bias=False))
    masks = _random_masks(model, ["0.weight"], 0.5, seed=1)
    masks["0.weight"][5] = False  # one channel pruned away entirely: its matrix [1, 9] can only reach error 1
    report = approximate_isometry(model, masks=masks, solver="cg", progress=False)
    w = model[0].weight.detach()
    norms = w.flatten(1).norm(dim=1)
    kept = masks["0.weight"].flatten(1).any(dim=1)
    assert torch.allclose(norms[kept], torch.ones(int(kept.sum())), atol=1e-4)  # power gain 1 per channel
    assert torch.all(w[~masks["0.weight"]] == 0) and torch.all(w[5] == 0)
    layer = report.layers["0.weight"]
    assert layer.best_possible == pytest.approx(1.0)
    assert layer.error_after == pytest.approx(1.0, abs=1e-4)
    assert layer.error_after == pytest.approx(_literal(_dense_equivalent(w, 16).reshape(16, -1)), abs=1e-5)
    assert (layer.kind, layer.groups, layer.rows, layer.cols) == ("conv", 16, 1, 9)


def test_grouped_conv_repaired_per_group():
    model = nn.Sequential(nn.Conv2d(8, 12, 3, groups=4, bias=False), nn.Conv2d(12, 24, 1, groups=3, bias=False))
    masks = _random_masks(model, ["0.weight", "1.weight"], 0.6, seed=2)
    before = {n: model.get_parameter(n).detach() * masks[n] for n in masks}
    report = approximate_isometry(model, masks=masks, solver="cg", progress=False)
    for name, groups in (("0.weight", 4), ("1.weight", 3)):
        w, layer = model.get_parameter(name).detach(), report.layers[name]
        c_out = w.shape[0]
        assert layer.error_before == pytest.approx(_literal(_dense_equivalent(before[name], groups).reshape(c_out, -1)),
                                                   rel=1e-5)
        assert layer.error_after == pytest.approx(_literal(_dense_equivalent(w, groups).reshape(c_out, -1)), abs=1e-5)
        assert layer.error_after == pytest.approx(layer.best_possible, abs=1e-3)
        assert torch.all(w[~masks[name]] == 0)
    # 8 -> 12, 3x3, 4 groups: each group [3, 18] reaches orthonormal rows where its mask allows full rank
    w = model[0].weight.detach()
    for g in range(4):
        m = w[3 * g : 3 * g + 3].reshape(3, -1)
        if structural_rank(masks["0.weight"][3 * g : 3 * g + 3].reshape(3, -1)) == 3:
            assert torch.allclose(m @ m.T, torch.eye(3), atol=1e-4)
    # 12 -> 24, 1x1, 3 groups: each group [8, 4] is tall: best sqrt(8 - 4) per group, the layer sqrt(3 * 4)
    assert report.layers["1.weight"].best_possible >= math.sqrt(12) - 1e-9


# --- attention blocks and transformers Conv1D ---------------------------------------------------------------------
class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def test_attention_in_proj_repaired_as_three_blocks():
    torch.manual_seed(0)
    model = _Attention()
    masks = _random_masks(model, ["attn.in_proj_weight", "attn.out_proj.weight"], 0.7, seed=3)
    before_state = _state(model)
    w0 = model.attn.in_proj_weight.detach() * masks["attn.in_proj_weight"]
    report = approximate_isometry(model, masks=masks, solver="cg", progress=False)
    layer = report.layers["attn.in_proj_weight"]
    assert layer.error_before == pytest.approx(_blocks_error(w0, 3), rel=1e-5)
    w = model.attn.in_proj_weight.detach()
    assert layer.error_after == pytest.approx(_blocks_error(w, 3), abs=1e-5)
    assert (layer.kind, layer.groups, layer.rows, layer.cols) == ("blocks", 3, 8, 8)
    for b, (block, mask) in enumerate(zip(w.chunk(3), masks["attn.in_proj_weight"].chunk(3))):
        if structural_rank(mask) == 8:  # query, key and value projections each orthogonal
            assert torch.allclose(block @ block.T, torch.eye(8), atol=1e-4), b
    assert layer.error_after == pytest.approx(layer.best_possible, abs=1e-3)
    assert torch.all(w[~masks["attn.in_proj_weight"]] == 0)
    after = _state(model)
    for key in ("attn.in_proj_bias", "attn.out_proj.bias"):  # 1-D tensors are not in the default selection
        assert torch.equal(after[key], before_state[key])


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("transformers")
    return zoo.tiny_gpt2(seed=0)


def test_transformers_conv1d_repaired_in_its_true_orientation(gpt2):
    model = gpt2
    selection = select_parameters(model)
    masks = _random_masks(model, list(selection), 0.5, seed=4)
    masks["lm_head.weight"] = masks.pop("transformer.wte.weight")  # a tied tensor's mask under its other name
    before_state = _state(model)
    pruned = {n: (model.get_parameter(n).detach() * m) for n, m in masks.items()}
    expected_errors = orthogonality_errors(model, masks)
    report = approximate_isometry(model, masks=masks, solver="cg", progress=False)
    assert set(report.layers) == set(selection)
    assert {n: x.error_before for n, x in report.layers.items()} == pytest.approx(expected_errors, rel=1e-6)
    conv1d = [n for n, x in report.layers.items() if x.kind == "transposed"]
    assert len(conv1d) == 8  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj in each of the 2 blocks
    for name in conv1d:
        layer, w, mask = report.layers[name], model.get_parameter(name).detach(), masks[name]
        n_in, n_out = w.shape  # transformers Conv1D stores [in, out]: the map is w.T, [out, in]
        assert layer.error_before == pytest.approx(_literal(pruned[name].T), rel=1e-5)
        assert layer.best_possible == pytest.approx(math.sqrt(n_out - structural_rank(mask)))
        assert layer.error_after == pytest.approx(_literal(w.T), abs=1e-4)
        assert layer.error_after == pytest.approx(layer.best_possible, abs=1e-3)
        assert torch.all(w[~mask] == 0)
        assert (layer.rows, layer.cols) == (n_out, n_in)
    for name in ("transformer.h.0.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.weight"):  # [128, 32]: w.T wide
        w = model.get_parameter(name).detach()
        if report.layers[name].reachable:
            assert torch.allclose(w.T @ w, torch.eye(32), atol=1e-3)
    tied = report.layers["transformer.wte.weight"]
    assert (tied.kind, tied.rows, tied.cols) == ("linear", 64, 32)
    assert torch.all(model.lm_head.weight[~masks["lm_head.weight"]] == 0)
    after = _state(model)
    for key, value in before_state.items():
        if key not in ("lm_head.weight", *selection):
            assert torch.equal(after[key], value), key  # embeddings of positions, norms, biases, buffers


# --- the faithful SGD per matrix equals a plain loop on the hand-written objective ---------------------------------
def _conv_case():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, bias=False))
    return model, "0.weight", lambda w: _literal_torch(_dense_equivalent(w, 2).reshape(6, -1))


def _attention_case():
    torch.manual_seed(0)
    model = _Attention()
    return model, "attn.in_proj_weight", lambda w: torch.sqrt(sum(_literal_torch(b) ** 2 for b in w.chunk(3)))


def _literal_torch(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(m @ m.T - torch.eye(m.shape[0], dtype=m.dtype))


@pytest.mark.parametrize("case", [_conv_case, _attention_case])
def test_faithful_sgd_per_matrix_equals_a_plain_loop(case):
    model, name, objective = case()
    model = model.double()
    masks = _random_masks(model, [name], 0.6, seed=5)
    start = model.get_parameter(name).detach().clone()
    approximate_isometry(model, parameters=[name], masks=masks, solver="sgd", steps=50, progress=False)
    w = start.clone().requires_grad_(True)
    c = masks[name].double()
    optimizer = torch.optim.SGD([w], lr=0.1)
    for _ in range(50):
        optimizer.zero_grad()
        objective(w * c).backward()
        optimizer.step()
    assert torch.allclose(model.get_parameter(name), (w * c).detach(), rtol=0, atol=1e-10)


# --- the one selection ---------------------------------------------------------------------------------------------
def test_only_the_selection_is_written():
    pytest.importorskip("transformers")
    model = zoo.tiny_bert_classifier(seed=0)
    selection = select_parameters(model, include="*attention.self.*.weight", exclude="*layer.1.*")
    before = _state(model)
    report = approximate_isometry(model, parameters=selection, solver="cg", steps=20, progress=False)
    assert sorted(report.layers) == sorted(selection) and len(selection) == 3  # query, key, value of layer 0
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(selection)


def test_one_dimensional_tensors_are_skipped_with_a_note():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    selection = select_parameters(model, include=["0.weight", "0.bias", "1.weight"])
    before = _state(model)
    report = approximate_isometry(model, parameters=selection, progress=False)
    assert list(report.layers) == ["0.weight"]
    assert report.notes == (
        "0.bias: skipped, it has fewer than 2 dimensions (not a linear map)",
        "1.weight: skipped, it has fewer than 2 dimensions (not a linear map)",
    )
    assert "note: 0.bias: skipped" in str(report)
    after = _state(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["0.weight"]
    assert report.layers["0.weight"].error_after < 1e-3
