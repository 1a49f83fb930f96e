"""N:M patterns in select_masks: valid by construction, the right entries kept, layouts honoured, refusals."""

import itertools

import pytest
import torch
from torch import nn

from lightning_prune_init.layouts import MatrixLayout
from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.selection import is_n_m, parse_pattern, pattern_sparsity, select_masks


def _reference(scores: torch.Tensor, n: int, m: int, lowest: bool = False) -> torch.Tensor:
    """Block by block in Python, rows of [rows, cols]: the n best of each block, ties to the earlier entry."""
    rows, cols = scores.shape
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for r, start in itertools.product(range(rows), range(0, cols, m)):
        block = [(float(scores[r, start + j]), j) for j in range(m)]
        block.sort(key=lambda t: (t[0] if lowest else -t[0], t[1]))
        for _, j in block[:n]:
            keep[r, start + j] = True
    return keep


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8", "1:2"])
def test_nm_masks_keep_exactly_n_of_every_m_and_the_best_ones(pattern):
    n, m = parse_pattern(pattern)
    g = torch.Generator().manual_seed(0)
    scores = {
        "fc.weight": torch.randint(0, 4, (6, 16), generator=g).float(),  # many ties inside blocks
        "conv.weight": torch.rand(5, 2, 2, 4, generator=g),  # [c_out, c_in, kh, kw] -> rows of 16 inputs
    }
    masks = select_masks(scores, pattern=pattern)
    for name, s in scores.items():
        flat = masks[name].reshape(s.shape[0], -1)
        assert is_n_m(masks[name], pattern), name
        assert (flat.reshape(s.shape[0], -1, m).sum(-1) == n).all(), name
        assert torch.equal(flat, _reference(s.reshape(s.shape[0], -1), n, m)), name
        assert int(masks[name].sum()) == s.numel() * n // m  # density exactly n/m, sparsity 1 - n/m
    inverted = select_masks(scores, pattern=pattern, invert=True)
    assert torch.equal(inverted["fc.weight"], _reference(scores["fc.weight"], n, m, lowest=True))


def test_ties_are_deterministic_the_earlier_entry_wins():
    scores = {"w": torch.ones(2, 8)}
    masks = select_masks(scores, pattern="2:4")
    assert masks["w"].tolist() == [[True, True, False, False] * 2] * 2
    assert torch.equal(select_masks(scores, pattern="2:4")["w"], masks["w"])


def test_pattern_follows_the_input_dimension_of_transposed_and_grouped_layouts():
    g = torch.Generator().manual_seed(1)
    # a transformers Conv1D weight is stored [in, out]: blocks run along its first axis
    stored = torch.rand(8, 3, generator=g)  # in=8, out=3
    masks = select_masks({"c_attn.weight": stored}, pattern="2:4", layouts={"c_attn.weight": MatrixLayout("transposed")})
    mask = masks["c_attn.weight"]
    assert mask.shape == stored.shape
    assert torch.equal(mask.T, _reference(stored.T, 2, 4))
    assert is_n_m(mask, "2:4", MatrixLayout("transposed"))
    assert not is_n_m(mask, "2:4")  # read the PyTorch way ([8, 3]: rows of 3) it is no 2:4 pattern
    # a ParameterSelection gives the layouts of a real model
    net = nn.Sequential(nn.Linear(8, 4), nn.Conv2d(4, 8, (1, 2), groups=2))
    net[1].weight.data = torch.rand(8, 2, 1, 2, generator=g)
    selection = select_parameters(net)
    scores = {name: p.detach().abs() for name, p in selection.items()}
    masks = select_masks(scores, pattern="1:4", layouts=selection)
    for name in scores:
        assert is_n_m(masks[name], "1:4", selection.layout(name)), name
    conv = scores["1.weight"].reshape(8, 4)  # each group's matrix [4, 2 · 2]: rows of the flattened weight
    assert torch.equal(masks["1.weight"].reshape(8, 4), _reference(conv, 1, 4))


def test_conflicting_sparsity_and_bad_patterns_are_refused_with_a_message():
    scores = {"w": torch.rand(4, 8)}
    assert pattern_sparsity("2:4") == 0.5
    assert torch.equal(select_masks(scores, 0.5, pattern="2:4")["w"], select_masks(scores, pattern="2:4")["w"])
    with pytest.raises(ValueError, match=r"pattern='2:4' keeps exactly 0.5 .* `sparsity`=0.9 was also given"):
        select_masks(scores, 0.9, pattern="2:4")
    with pytest.raises(ValueError, match=r"`min_density`=0.6 asks for more than the 0.5"):
        select_masks(scores, pattern="2:4", min_density=0.6)
    for bad in ("4:2", "2:2", "0:4", "2-4", "a:b"):
        with pytest.raises(ValueError, match="`pattern` must be 'n:m' with 1 <= n < m"):
            select_masks(scores, pattern=bad)
    with pytest.raises(TypeError, match="`pattern` must be a string"):
        select_masks(scores, pattern=(2, 4))
    with pytest.raises(TypeError, match="needs `sparsity`"):
        select_masks(scores)


def test_a_tensor_the_pattern_cannot_divide_is_named():
    scores = {"ok.weight": torch.rand(4, 8), "head.weight": torch.rand(10, 6), "fc.bias": torch.rand(8)}
    with pytest.raises(ValueError, match=r"'head.weight' \(shape \(10, 6\), matrix layout\) has 6 inputs per row"):
        select_masks({k: scores[k] for k in ("ok.weight", "head.weight")}, pattern="2:4")
    with pytest.raises(ValueError, match=r"'fc.bias' has shape \(8,\) \(fewer than 2 dimensions\)"):
        select_masks({k: scores[k] for k in ("ok.weight", "fc.bias")}, pattern="2:4")
