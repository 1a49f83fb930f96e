"""Scoring token models (issue 11, "Token models"): tiny GPT-2, Llama and BERT from tests/zoo.py.

Supervised, label-free and data-free scoring on dict batches; noise for dict batches (token ids in the embedding's
range); GraSP through attention (math SDPA kernel); SynFlow's probe on token models. Each of these failed before
the scoring package (dict batches needed a `loss_fn`, `noise_batches` took tensors only, GraSP raised the raw
`derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented`, SynFlow asked
token models for an input shape).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.scoring import (
    ScoringContext,
    ScoringInputError,
    connection_sensitivity,
    criterion_masks,
    noise_batches,
    vocab_size_of,
)
from lightning_prune_init.scoring.synflow import synflow, synflow_probe
from lightning_prune_init.selection import keep_count

from tests.zoo import VOCAB, HFModule, hf_logits, hf_loss, tiny_bert_classifier, tiny_gpt2, tiny_llama, token_batch

pytest.importorskip("transformers")

MODELS = {"gpt2": (tiny_gpt2, "lm"), "llama": (tiny_llama, "lm"), "bert": (tiny_bert_classifier, "cls")}


def _model_and_batch(name):
    build, labels = MODELS[name]
    return build(), token_batch(labels=labels, seed=3)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def _differ(a, b):
    return sum(int((a[n] != b[n]).sum()) for n in a)


def _uniform_hand(model, batch):
    """SNIP's label-free scores by hand: |∂L/∂w · w| / Σ, L = −(1/C) Σ_k log softmax(logits)_k over all positions."""
    ref = copy.deepcopy(model).eval()
    weights = {n: p for n, p in ref.named_parameters() if n in select_parameters(model)}
    logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = -F.log_softmax(logits, dim=-1).mean()
    grads = torch.autograd.grad(loss, list(weights.values()))
    hand = {n: (g * w).abs().detach() for (n, w), g in zip(weights.items(), grads)}
    total = sum(float(h.sum()) for h in hand.values())
    return {n: h / total for n, h in hand.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_label_free_and_data_free_differ_from_labels_on_token_models(name):
    model, batch = _model_and_batch(name)
    before = copy.deepcopy(model.state_dict())
    scores, masks = {}, {}
    noise = noise_batches(batch, 1, seed=1, vocab_size=vocab_size_of(model))
    for supervision, batches in [("labels", [batch]), ("label_free", [batch]), ("data_free", noise)]:
        scores[supervision], masks[supervision] = criterion_masks(
            model, batches, sparsity=0.8, supervision=supervision, on_layer_collapse="ignore")
    # the defaults on dict batches are the model's own loss and the uniform target on its `.logits`
    assert _same(scores["labels"], connection_sensitivity(model, [batch], loss_fn=hf_loss))
    assert _same(scores["label_free"], connection_sensitivity(model, [batch], labels="uniform", logits_fn=hf_logits))
    hand = _uniform_hand(model, batch)
    for n in hand:
        torch.testing.assert_close(scores["label_free"][n], hand[n], rtol=1e-4, atol=1e-9)
    total = sum(m.numel() for m in masks["labels"].values())
    assert all(sum(int(m.sum()) for m in ms.values()) == keep_count(total, 0.8) for ms in masks.values())
    # measured (seed 0 models, batch seed 3): thousands of entries differ, e.g. gpt2 5,000+ of 26,624
    assert _differ(masks["labels"], masks["label_free"]) > 0.05 * total
    assert _differ(masks["labels"], masks["data_free"]) > 0.05 * total
    assert _differ(masks["label_free"], masks["data_free"]) > 0.01 * total
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_lightning_module_around_a_transformers_model():
    """HFModule (forward(**batch) -> the model's output) is what the callback scores."""
    module = HFModule(tiny_gpt2())
    batch = token_batch(seed=3)
    assert vocab_size_of(module) == VOCAB
    inner = connection_sensitivity(module.model, [batch])
    outer = connection_sensitivity(module, [batch])
    assert _same({f"model.{n}": s for n, s in inner.items()}, outer)
    free = connection_sensitivity(module, noise_batches(batch, 2, vocab_size=vocab_size_of(module)), labels="uniform")
    assert free.keys() == outer.keys() and not _same(free, outer)


def test_noise_for_dict_batches():
    batch = token_batch(labels="cls", seed=3)
    batch["pixel_values"] = torch.ones(4, 2, 3, dtype=torch.float64)
    rng = torch.get_rng_state()
    a = noise_batches(batch, 3, seed=5, vocab_size=10)
    assert torch.equal(torch.get_rng_state(), rng)
    b = noise_batches(batch, 3, seed=5, vocab_size=10)
    for x, y in zip(a, b):
        assert x.keys() == batch.keys() and all(torch.equal(x[k], y[k]) for k in x)  # seeded
        assert x["input_ids"].dtype == torch.long and x["input_ids"].shape == (4, 8)
        assert 0 <= int(x["input_ids"].min()) and int(x["input_ids"].max()) < 10
        assert torch.equal(x["attention_mask"], batch["attention_mask"]) and torch.equal(x["labels"], batch["labels"])
        assert x["pixel_values"].dtype == torch.float64 and not torch.equal(x["pixel_values"], batch["pixel_values"])
    assert not torch.equal(a[0]["input_ids"], a[1]["input_ids"])
    # ids drawn uniformly over the whole range
    many = noise_batches({"input_ids": torch.zeros(100, 50, dtype=torch.long)}, seed=0, vocab_size=10)[0]["input_ids"]
    assert torch.bincount(many.reshape(-1), minlength=10).min() > 400
    # another batch size: drawn entries get the new size, copied ones repeat their rows
    resized = noise_batches(batch, seed=5, vocab_size=10, batch_size=6)[0]
    assert resized["input_ids"].shape == (6, 8)
    assert torch.equal(resized["attention_mask"], batch["attention_mask"][[0, 1, 2, 3, 0, 1]])
    with pytest.raises(ValueError, match="entry 'input_ids'.*`vocab_size`.*vocab_size_of"):
        noise_batches(batch)
    # tuples: the first element is the input (ids or noise), floating entries become noise, others are copied
    x, y = noise_batches((torch.zeros(4, 8, dtype=torch.long), torch.arange(4)), vocab_size=7)[0]
    assert int(x.max()) < 7 and torch.equal(y, torch.arange(4))
    image = torch.zeros(4, 1, 5, 5, dtype=torch.uint8)  # bytes of an image: float32 noise, as before
    assert noise_batches(image)[0].dtype == torch.float32
    with pytest.raises(TypeError, match="`like` must be one batch"):
        noise_batches({})


def test_noise_from_example_input_array_dict_scores_the_module():
    module = HFModule(tiny_bert_classifier())
    module.example_input_array = {"input_ids": torch.zeros(2, 8, dtype=torch.long),
                                  "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    noise = noise_batches(module.example_input_array, 2, vocab_size=vocab_size_of(module))
    scores, masks = criterion_masks(module, noise, sparsity=0.5, supervision="data_free", on_layer_collapse="ignore")
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_grasp_through_default_sdpa_attention_equals_eager_attention(name):
    model, batch = _model_and_batch(name)
    assert model.config._attn_implementation == "sdpa"
    flags = [torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
             torch.backends.cuda.math_sdp_enabled()]
    scores, masks = criterion_masks(model, [batch], criterion="grasp", sparsity=0.8, on_layer_collapse="ignore")
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    expected, _ = criterion_masks(eager, [batch], criterion="grasp", sparsity=0.8, on_layer_collapse="ignore")
    scale = max(float(s.abs().max()) for s in expected.values())
    for n in expected:
        torch.testing.assert_close(scores[n], expected[n], rtol=1e-3, atol=1e-5 * scale)
    assert min(float(s.min()) for s in scores.values()) == 0.0
    # the math kernel is chosen only while scoring: the backend flags are restored
    assert flags == [torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                     torch.backends.cuda.math_sdp_enabled()]


class _TokenChain(nn.Module):
    """Embedding -> Linear -> Linear on token ids: logits [n, seq, 2]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc1, self.fc2 = nn.Embedding(10, 3), nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, ids):
        return self.fc2(self.fc1(self.emb(ids)))


def test_synflow_on_token_ids_replaces_the_embedding_output_by_ones():
    net = _TokenChain()
    ids = torch.randint(0, 10, (4, 5))
    probe, embedding = synflow_probe(net, [ids], None, torch.float64)
    assert embedding is net.emb and torch.equal(probe, ids[:1])
    scores = synflow(net, [ids], select_parameters(net), ScoringContext(sparsity=0.5, options={"rounds": 1}))
    a1, a2 = net.fc1.weight.detach().abs().double(), net.fc2.weight.detach().abs().double()
    # R = Σ_positions 1ᵀ|W2||W1|1: every one of the 5 positions carries the chain's flow
    hand1 = 5 * (torch.ones(2, dtype=torch.float64) @ a2)[:, None] * a1 * torch.ones(1, 3, dtype=torch.float64)
    hand2 = 5 * torch.ones(2, 1, dtype=torch.float64) * a2 * (a1 @ torch.ones(3, dtype=torch.float64))[None, :]
    torch.testing.assert_close(scores["fc1.weight"], hand1, rtol=1e-12, atol=0)
    torch.testing.assert_close(scores["fc2.weight"], hand2, rtol=1e-12, atol=0)
    assert not net.emb._forward_hooks  # the hook is removed
    bare = nn.Sequential(nn.Linear(5, 2))
    with pytest.raises(ScoringInputError, match="input embedding"):
        criterion_masks(bare, [ids], criterion="synflow", sparsity=0.5, criterion_options={"rounds": 1})


@pytest.mark.parametrize("name", list(MODELS))
def test_synflow_runs_on_token_models_from_a_batch_or_example_input_array(name):
    model, batch = _model_and_batch(name)
    before = copy.deepcopy(model.state_dict())
    options = {"rounds": 3}
    scores, masks = criterion_masks(model, [batch], criterion="synflow", sparsity=0.8, criterion_options=options,
                                    on_layer_collapse="ignore")
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == keep_count(total, 0.8)
    ids_only, _ = criterion_masks(model, [batch["input_ids"]], criterion="synflow", sparsity=0.8,
                                  criterion_options=options, on_layer_collapse="ignore")
    module = HFModule(copy.deepcopy(model))
    module.example_input_array = {k: v for k, v in batch.items() if k != "labels"}
    from_example, _ = criterion_masks(module, None, criterion="synflow", sparsity=0.8, criterion_options=options,
                                      on_layer_collapse="ignore")
    assert _same(scores, ids_only)  # the probe's attention mask is all ones: the same as none
    assert _same({f"model.{n}": s for n, s in scores.items()}, from_example)
    if name == "gpt2":  # the tied wte/lm_head gets its flow as the output head
        assert bool(scores["transformer.wte.weight"].any())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
