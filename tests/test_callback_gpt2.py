"""Issue 11, acceptance 3: GPT-2 through the callback with its default selection. Every transformers ``Conv1D``
weight is pruned, the head tied to the embedding is pruned once (one mask, both names reported), and ``init`` and
the repair run on the Conv1D weights in their true ``[in, out]`` orientation. Before the selection object the fit
stopped at "no prunable parameters" (Conv1D unknown) and the tied head was left dense with no word.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from torch.utils.data import DataLoader

from lightning_prune_init import PruneAtInitCallback, get_masks, select_parameters
from lightning_prune_init.masks import masked_nonzeros
from tests.helpers import trainer_kwargs
from tests.zoo import HFModule, tiny_gpt2, token_batch

pytest.importorskip("transformers")


def _loader(n: int = 4) -> DataLoader:
    return DataLoader([token_batch(seed=s) for s in range(n)], batch_size=None)


def test_gpt2_default_settings_prune_every_conv1d_and_the_tied_head_once_with_init_and_repair(tmp_path):
    from transformers.pytorch_utils import Conv1D

    pl.seed_everything(0)
    module = HFModule(tiny_gpt2())
    conv1d = {f"model.{n}.weight" for n, m in module.model.named_modules() if isinstance(m, Conv1D)}
    assert len(conv1d) == 8
    selection = select_parameters(module)
    pruner = PruneAtInitCallback(0.8, init={"scheme": "orthogonal", "seed": 0}, isometry={"steps": 300}, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=3), callbacks=[pruner])
    trainer.fit(module, train_dataloaders=_loader())

    masks = pruner.masks
    assert conv1d <= set(masks)
    # the tied tensor: one mask, under its first name; the head is the same tensor
    assert "model.transformer.wte.weight" in masks and "model.lm_head.weight" not in masks
    assert module.model.lm_head.weight is module.model.transformer.wte.weight
    assert any("model.lm_head.weight" in note for note in pruner.selection.notes)
    total = sum(p.numel() for n, p in module.named_parameters() if n in masks)
    assert sum(int(m.sum()) for m in masks.values()) == round(total * 0.2)
    assert set(get_masks(module)) == set(masks)
    assert masked_nonzeros(module, masks) == dict.fromkeys(masks, 0)  # after three AdamW steps

    # the repair ran on every Conv1D weight (read as [out, in]) and brought it to the lowest error its mask allows
    assert selection.layout("model.transformer.h.0.attn.c_attn.weight").kind == "transposed"
    report = pruner.isometry_report
    for name in conv1d:
        layer = report.layers[name]
        assert layer.error_after < layer.error_before
        assert layer.error_after - layer.best_possible < 1e-3 * layer.error_before  # as low as its mask allows
