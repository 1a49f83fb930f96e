"""Scores -> masks: exact keep count, deterministic ties, global vs layerwise, errors."""

import pytest
import torch

from lightning_prune_init.selection import (
    LayerCollapseError,
    LayerCollapseWarning,
    keep_count,
    kth_largest,
    select_masks,
)

from tests.helpers import reference_keep


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 0.37])
def test_global_masks_match_sorted_reference_with_many_ties(sparsity):
    g = torch.Generator().manual_seed(0)
    # few distinct values -> many ties across and within tensors
    scores = {
        "a.weight": torch.randint(0, 5, (7, 9), generator=g).float(),
        "b.weight": torch.randint(0, 5, (3, 4, 2, 2), generator=g).float(),
        "c.weight": torch.randint(0, 5, (11,), generator=g).float(),
    }
    total = sum(s.numel() for s in scores.values())
    masks = select_masks(scores, sparsity, on_layer_collapse="ignore")
    assert sum(int(m.sum()) for m in masks.values()) == keep_count(total, sparsity)
    expected = reference_keep(scores, keep_count(total, sparsity))
    for name in scores:
        assert torch.equal(masks[name], expected[name]), name


def test_kth_largest_equals_sort_for_continuous_values():
    g = torch.Generator().manual_seed(1)
    tensors = [torch.rand(50, generator=g), torch.rand(3, 7, generator=g) * 1e-30, torch.rand(5, generator=g) * 1e30]
    flat = torch.cat([t.reshape(-1) for t in tensors]).sort(descending=True).values
    for k in (1, 2, 10, 40, flat.numel()):
        assert kth_largest(tensors, k).item() == flat[k - 1].item()


def test_float64_scores_and_zero_and_negative_zero():
    scores = {"w": torch.tensor([0.0, -0.0, 3.0, 1e-300, 2.0], dtype=torch.float64)}
    masks = select_masks(scores, 0.4)  # keep round(5 * 0.6) = 3
    assert masks["w"].tolist() == [False, False, True, True, True]


def test_layerwise_keeps_exact_count_per_tensor():
    g = torch.Generator().manual_seed(2)
    scores = {"a": torch.rand(10, 10, generator=g), "b": torch.rand(33, generator=g) * 100}
    masks = select_masks(scores, 0.8, scope="layerwise")
    assert int(masks["a"].sum()) == 20
    assert int(masks["b"].sum()) == round(33 * 0.2)
    # and those are the top entries of each tensor
    assert masks["a"].reshape(-1)[scores["a"].reshape(-1).argsort(descending=True)[:20]].all()


def test_global_scope_can_collapse_a_layer_and_policy_applies():
    scores = {"big": torch.full((100,), 10.0), "small": torch.full((10,), 1.0)}
    with pytest.warns(LayerCollapseWarning, match="small"):
        masks = select_masks(scores, 0.5)
    assert int(masks["small"].sum()) == 0
    with pytest.raises(LayerCollapseError, match="small"):
        select_masks(scores, 0.5, on_layer_collapse="error")


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=r"`sparsity` must be a finite number in \[0, 1\)"):
        select_masks({"w": torch.rand(4)}, bad)


def test_bad_scores_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        select_masks({"w": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError, match="negative"):
        select_masks({"w": torch.tensor([1.0, -1.0])}, 0.5)
    with pytest.raises(ValueError, match="scope"):
        select_masks({"w": torch.rand(4)}, 0.5, scope="per-layer")
