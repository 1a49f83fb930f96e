"""select_masks options (min_density, invert), radix selection on float64, collapse of layers and of units."""

import math

import pytest
import torch

from lightning_prune_init.selection import (
    LayerCollapseError,
    LayerCollapseWarning,
    check_collapse,
    find_collapse,
    keep_count,
    kth_largest,
    min_keep_count,
    select_masks,
)

from tests.helpers import reference_keep


def _tied_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "big.weight": torch.randint(5, 10, (12, 10), generator=g).float(),  # all above the small layer
        "mid.weight": torch.randint(0, 10, (4, 3, 2), generator=g).float(),
        "small.weight": torch.randint(0, 3, (5, 2), generator=g).float(),
    }


@pytest.mark.parametrize("min_density", [0.05, 0.1, 0.25])
def test_min_density_floors_then_the_best_of_the_rest_with_an_exact_total(min_density):
    scores = _tied_scores()
    sparsity = 0.7
    total = sum(s.numel() for s in scores.values())
    k = keep_count(total, sparsity)
    masks = select_masks(scores, sparsity, min_density=min_density, on_layer_collapse="ignore")
    # hand: each tensor's floor from its own top entries, then the k - Σ floors best of everything else
    floors = {n: math.ceil(round(min_density * s.numel(), 9)) for n, s in scores.items()}
    forced = {n: reference_keep({n: s}, floors[n])[n] for n, s in scores.items()}
    rest = reference_keep(scores, k - sum(floors.values()), eligible={n: ~f for n, f in forced.items()})
    for n in scores:
        assert torch.equal(masks[n], forced[n] | rest[n]), n
        assert int(masks[n].sum()) >= floors[n]
    assert sum(int(m.sum()) for m in masks.values()) == k


def test_min_density_rescues_a_collapsed_layer():
    scores = {"big": torch.full((100,), 10.0), "small": torch.arange(10, dtype=torch.float32)}
    with pytest.warns(LayerCollapseWarning, match="small"):
        plain = select_masks(scores, 0.5)
    assert int(plain["small"].sum()) == 0
    masks = select_masks(scores, 0.5, min_density=0.2, on_layer_collapse="error")
    assert masks["small"].tolist() == [False] * 8 + [True, True]  # its two highest scores
    assert int(masks["big"].sum()) == 53 and masks["big"][:53].all()  # the rest of the 55, earliest ties first


def test_min_density_layerwise_and_limits():
    scores = {"a": torch.rand(10, 10), "b": torch.rand(7)}
    masks = select_masks(scores, 0.9, scope="layerwise", min_density=0.3, on_layer_collapse="ignore")
    assert int(masks["a"].sum()) == 30 and int(masks["b"].sum()) == 3  # max(round(n · 0.1), ceil(0.3 · n))
    assert torch.equal(masks["a"].reshape(-1), reference_keep({"a": scores["a"]}, 30)["a"].reshape(-1))
    with pytest.raises(ValueError, match="`min_density`=0.3 asks for 33 kept entries in all, more than the 11"):
        select_masks(scores, 0.9, min_density=0.3)
    with pytest.raises(ValueError, match=r"`min_density` must be a finite number in \[0, 1\]"):
        select_masks(scores, 0.5, min_density=1.5)
    with pytest.raises(TypeError, match="min_density"):
        select_masks(scores, 0.5, min_density="0.1")
    assert min_keep_count(30, 0.1) == 3  # not 4: 0.1 · 30 is 3.0000000000000004 in floating point
    assert min_keep_count(5, 1.0) == 5 and min_keep_count(5, 0.0) == 0


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_invert_keeps_the_lowest_scores_with_the_same_tie_break(scope):
    scores = _tied_scores(1)
    sparsity = 0.6
    masks = select_masks(scores, sparsity, scope=scope, invert=True, on_layer_collapse="ignore")
    if scope == "global":
        total = sum(s.numel() for s in scores.values())
        expected = reference_keep(scores, keep_count(total, sparsity), lowest=True)
    else:
        expected = {n: reference_keep({n: s}, keep_count(s.numel(), sparsity), lowest=True)[n] for n, s in scores.items()}
    for n in scores:
        assert torch.equal(masks[n], expected[n]), n


def test_invert_with_float64_extremes_and_zeros():
    scores = {"w": torch.tensor([0.0, 1e-300, 3.0, 1e300, 0.0, 2.0], dtype=torch.float64)}
    assert select_masks(scores, 0.5, invert=True)["w"].tolist() == [True, True, False, False, True, False]
    assert select_masks(scores, 0.5)["w"].tolist() == [False, False, True, True, False, True]


def test_radix_selection_on_float64_equals_sort():
    g = torch.Generator().manual_seed(3)
    tensors = [
        torch.rand(40, generator=g, dtype=torch.float64) * 1e-200,
        torch.randint(0, 4, (6, 5), generator=g).double(),  # ties and zeros
        torch.rand(9, generator=g, dtype=torch.float64) * 1e250,
    ]
    flat = torch.cat([t.reshape(-1) for t in tensors]).sort(descending=True).values
    for k in (1, 5, 9, 10, 25, 60, flat.numel()):
        assert kth_largest(tensors, k).item() == flat[k - 1].item()


def test_dead_output_units_are_detected_for_linear_and_conv_weights():
    linear = torch.ones(4, 3, dtype=torch.bool)
    linear[2] = False  # unit 2 keeps no input
    conv = torch.ones(3, 2, 2, 2, dtype=torch.bool)
    conv[0] = False
    conv[1, 0] = False  # channel 1 still keeps the inputs of c_in = 1
    bias = torch.tensor([False, True])  # biases have no units
    masks = {"fc.weight": linear, "conv.weight": conv, "fc.bias": bias, "gone.weight": torch.zeros(2, 2, dtype=torch.bool)}
    found = find_collapse(masks)
    assert found.pruned_entirely == ["gone.weight"]
    assert found.dead_units == {"fc.weight": 1, "conv.weight": 1}
    with pytest.warns(LayerCollapseWarning, match=r"pruned entirely: gone.weight.*fc.weight \(1 of 4\), conv.weight \(1 of 3\)"):
        names = check_collapse(masks)
    assert names == ["gone.weight", "fc.weight", "conv.weight"]
    with pytest.raises(LayerCollapseError, match="output unit"):
        check_collapse({"fc.weight": linear}, "error")
    assert check_collapse({"fc.weight": linear}, "ignore") == ["fc.weight"]
    assert check_collapse({"fc.weight": linear}, "error", units=False) == []


def test_select_masks_reports_dead_units():
    scores = {"fc.weight": torch.tensor([[9.0, 8.0], [7.0, 6.0], [0.0, 0.0]])}
    assert select_masks(scores, 0.5, on_layer_collapse="error")["fc.weight"][2].any() == False  # noqa: E712
    with pytest.raises(LayerCollapseError, match=r"fc.weight \(1 of 3\)"):
        select_masks(scores, 0.5, on_dead_units="error")
    masks = select_masks(scores, 0.5, scope="layerwise", min_density=0.5, on_layer_collapse="ignore")
    assert masks["fc.weight"].tolist() == [[True, True], [True, False], [False, False]]
