"""SignalPropagationMonitor on token models (tiny BERT, GPT-2, Llama in a LightningModule trained on dict batches)
and with the pruner's selection: logged values against hand computations, the probe in the checkpoint state."""

import copy
import io

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment

from lightning_prune_init import PruneAtInitCallback, get_masks
from lightning_prune_init.callbacks.signal_propagation import SignalPropagationMonitor
from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.spectrum import jacobian_singular_values

from tests.helpers import Classifier, conv_bn_net, trainer_kwargs
from tests.zoo import (
    VOCAB,
    HFModule,
    hf_embedding_jacobian_values,
    tiny_bert_classifier,
    tiny_gpt2,
    tiny_llama,
    token_batch,
    token_loader,
)


def pooled(*matrices):
    """The singular values of a block-diagonal operator: those of its blocks, pooled, sorted descending."""
    return torch.cat([torch.linalg.svdvals(m.detach().double()) for m in matrices]).sort(descending=True).values.float()


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call: ``{tag: [(step, value), ...]}``."""

    def __init__(self):
        super().__init__()
        self.scalars = {}

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    @property
    @rank_zero_experiment
    def experiment(self):
        return None

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.scalars.setdefault(k, []).append((step, float(v)))


def fit(module, loader, callbacks, tmp_path, steps=2):
    logger = RecordingLogger()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, max_steps=steps), callbacks=callbacks)
    trainer.fit(module, train_dataloaders=loader)
    return logger.scalars


def only(scalars, tag):
    ((step, value),) = scalars[tag]
    return value


def test_monitor_on_bert_writes_layerwise_and_end_to_end_scalars(tmp_path):
    pl.seed_everything(0)
    model = tiny_bert_classifier()
    initial = copy.deepcopy(model)
    monitor = SignalPropagationMonitor(every_n_steps=1, num_examples=4, figures=False, histograms=False)
    scalars = fit(HFModule(model), token_loader(labels="cls"), [monitor], tmp_path)

    probe = monitor.state_dict()["probe"]  # the first batch, whole: ids, mask and labels
    first = token_batch(16, labels="cls")
    assert set(probe) == {"input_ids", "attention_mask", "labels"}
    assert all(torch.equal(probe[k], first[k][:4]) for k in probe)

    # end to end: d logits / d word embeddings at the initial weights, per example (3 x 256 each: exact)
    expected = hf_embedding_jacobian_values(initial, probe).double()
    assert only(scalars, "jsv/fit_start/end_to_end/max") == pytest.approx(float(expected.max()), rel=1e-4)
    assert only(scalars, "jsv/fit_start/end_to_end/mean") == pytest.approx(float(expected.mean()), rel=1e-4)
    # layerwise: every selected layer; the classifier is paired with the logits, so its values are its weight's
    layers = [n.rpartition(".")[0] for n in select_parameters(HFModule(initial))]
    for layer in layers:
        assert f"jsv/fit_start/layerwise/{layer}/mean_sq" in scalars, layer
        assert f"jsv/fit_start/weights/{layer}/max" in scalars and only(scalars, f"density/fit_start/{layer}") == 1.0
    w = pooled(initial.classifier.weight)
    assert only(scalars, "jsv/fit_start/layerwise/model.classifier/max") == pytest.approx(float(w[0]), rel=1e-5)
    assert [s for s, _ in scalars["jsv/train/end_to_end/max"]] == [0, 1]
    assert [s for s, _ in scalars["jsv/train/layerwise/model.bert.encoder.layer.1.output.dense/max"]] == [0, 1]


def test_monitor_on_gpt2_reads_conv1d_and_the_tied_head(tmp_path):
    pl.seed_everything(0)
    model = tiny_gpt2()
    initial = copy.deepcopy(model)
    monitor = SignalPropagationMonitor(
        every_n_steps=0, num_examples=2, scopes=["weights", "end_to_end"], include=["*.c_attn.weight", "*lm_head*"],
        method="exact", figures=False, histograms=False,
    )
    scalars = fit(HFModule(model), token_loader(n=4, seq=4, batch_size=2), [monitor], tmp_path, steps=1)
    assert sorted(k for k in scalars if k.startswith("density/")) == [
        "density/fit_start/model.lm_head",
        "density/fit_start/model.transformer.h.0.attn.c_attn",
        "density/fit_start/model.transformer.h.1.attn.c_attn",
    ]
    stats = monitor.last_results["weights"]["model.transformer.h.0.attn.c_attn"]
    assert stats.shape == (96, 32)  # [out, in] of a weight stored [in, out]
    torch.testing.assert_close(stats.values[0], pooled(initial.transformer.h[0].attn.c_attn.weight.T))
    head = only(scalars, "jsv/fit_start/weights/model.lm_head/max")
    assert head == pytest.approx(float(pooled(initial.lm_head.weight)[0]), rel=1e-5)
    expected = hf_embedding_jacobian_values(initial, monitor.state_dict()["probe"])
    torch.testing.assert_close(monitor.last_results["end_to_end"]["end_to_end"].values, expected.float(), atol=2e-5, rtol=1e-4)


def test_monitor_on_llama_with_its_end_to_end_jacobian(tmp_path):
    pl.seed_everything(0)
    model = tiny_llama()
    initial = copy.deepcopy(model)
    monitor = SignalPropagationMonitor(every_n_steps=0, num_examples=2, layers="*.layers.1.mlp.*", figures=False)
    scalars = fit(HFModule(model), token_loader(n=4, seq=4, batch_size=2), [monitor], tmp_path, steps=1)
    assert list(monitor.last_results["layerwise"]) == [
        "model.model.layers.1.mlp.gate_proj",
        "model.model.layers.1.mlp.up_proj",
        "model.model.layers.1.mlp.down_proj",
    ]
    expected = hf_embedding_jacobian_values(initial, monitor.state_dict()["probe"]).double()  # 256 x 128: exact
    assert only(scalars, "jsv/fit_start/end_to_end/max") == pytest.approx(float(expected.max()), rel=1e-4)
    assert only(scalars, "jsv/fit_start/end_to_end/std") == pytest.approx(float(expected.std(unbiased=False)), rel=1e-3)


class SelectingPruner(PruneAtInitCallback):
    """A pruner (a subclass: found with isinstance) whose ``selection`` names two of the three layers."""

    def on_fit_start(self, trainer, pl_module):
        self.selection = select_parameters(pl_module, include=["net.4.weight", "net.10.weight"])
        super().on_fit_start(trainer, pl_module)


def test_monitor_takes_the_pruners_selection(tmp_path):
    pl.seed_everything(0)
    model = Classifier(net=conv_bn_net(), shape=(1, 12, 12))
    pruner = SelectingPruner(sparsity=0.5, parameters=["net.4.weight", "net.10.weight"], verbose=False)
    monitor = SignalPropagationMonitor(every_n_steps=0, scopes=["weights"], figures=False)
    scalars = fit(model, None, [pruner, monitor], tmp_path, steps=1)
    assert not any("fit_start" in k for k in scalars)  # the pruner's stages replace fit_start
    for stage in ("after_init", "after_pruning"):
        assert sorted(k for k in scalars if k.startswith(f"density/{stage}/")) == [
            f"density/{stage}/net.10",
            f"density/{stage}/net.4",
        ]
        assert not any(k.startswith(f"jsv/{stage}/weights/net.0/") for k in scalars)  # not selected by the pruner
    masks = get_masks(model)
    assert only(scalars, "density/after_pruning/net.4") == pytest.approx(float(masks["net.4.weight"].float().mean()))


def test_noise_probe_for_a_token_model_and_the_dict_probe_in_the_checkpoint_state():
    module = HFModule(tiny_bert_classifier())
    module.example_input_array = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    monitor = SignalPropagationMonitor(probe="noise", num_examples=3, input_key="input_ids", scopes=["end_to_end"], seed=5)
    results, _ = monitor.compute(None, module)
    probe = monitor.state_dict()["probe"]
    ids = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(probe["input_ids"], ids) and torch.equal(probe["attention_mask"], torch.ones(3, 8, dtype=torch.long))
    expected = jacobian_singular_values(module, probe, scope="end_to_end")["end_to_end"]
    torch.testing.assert_close(results["end_to_end"]["end_to_end"].values, expected.values)

    buffer = io.BytesIO()
    torch.save(monitor.state_dict(), buffer)
    buffer.seek(0)
    restored = SignalPropagationMonitor(scopes=["end_to_end"], probe="data")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    again, _ = restored.compute(None, module)  # no trainer, no data: the saved probe
    torch.testing.assert_close(again["end_to_end"]["end_to_end"].values, expected.values)


def test_old_tensor_probe_states_still_load():
    restored = SignalPropagationMonitor(scopes=["end_to_end"])
    restored.load_state_dict({"format": 1, "probe": torch.zeros(2, 1, 12, 12), "last_train_step": 4})
    model = Classifier(net=conv_bn_net(), shape=(1, 12, 12))
    results, _ = restored.compute(None, model)
    assert results["end_to_end"]["end_to_end"].num_examples == 2
    with pytest.raises(ValueError, match="state format"):
        restored.load_state_dict({"format": 99})
