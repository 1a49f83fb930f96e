"""Spectra on real layouts and token models: grouped/depthwise convs, transformers Conv1D, attention in_proj, tied
heads, dict batches and ModelOutput outputs (tiny BERT, GPT-2, Llama), each against hand-built matrices."""

import pytest
import torch
from torch import nn
from torch.func import jacrev, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_prune_init.parameters import select_parameters
from lightning_prune_init.spectrum import END_TO_END, conv_singular_values_fft, jacobian_singular_values

from tests.zoo import HFModule, hf_embedding_jacobian_values, tiny_bert_classifier, tiny_gpt2, tiny_llama, token_batch


def pooled(*matrices):
    """The singular values of a block-diagonal operator: those of its blocks, pooled, sorted descending."""
    return torch.cat([torch.linalg.svdvals(m.detach().double()) for m in matrices]).sort(descending=True).values.float()


def derivative(fn, pre):
    """Elementwise derivative of an elementwise activation at ``pre``."""
    return jvp(fn, (pre,), (torch.ones_like(pre),))[1]


def first_input(module, model, batch):
    """The first input ``module`` receives when ``model`` runs on ``batch`` (eval mode, math attention)."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()) if not seen else None)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        model(**batch)
    handle.remove()
    return seen[0]


# ------------------------------------------------------------------------------------------- weights scope
def test_grouped_and_depthwise_conv_weights_are_block_diagonal_operators():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.Conv2d(6, 6, 3, groups=6), nn.Conv2d(6, 5, 1))
    result = jacobian_singular_values(model, scope="weights", method="exact")
    grouped, depthwise = model[0].weight, model[1].weight
    expected = pooled(grouped[:3].reshape(3, 18), grouped[3:].reshape(3, 18))
    torch.testing.assert_close(result["0"].values[0], expected)
    assert (result["0"].shape, result["0"].groups, result["0"].num_examples) == ((3, 18), 2, 1)
    # depthwise: each channel is a 1 x 9 matrix whose one singular value is its norm (the old [6, 9] read gave 6
    # values of a matrix that mixes channels)
    torch.testing.assert_close(result["1"].values[0], depthwise.detach().reshape(6, 9).norm(dim=1).sort(descending=True).values)
    assert (result["1"].shape, result["1"].groups) == ((1, 9), 6)
    assert result["1"].mean_sq == pytest.approx(float(depthwise.detach().pow(2).sum() / 6), rel=1e-5)
    assert result["2"].groups == 1 and result["2"].shape == (5, 6)


def test_pooled_group_values_are_the_values_of_the_conv_operator():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 6, 1, groups=3, bias=False)  # a 1x1 conv on a 1x1 image: its operator is its weight
    operator = jacrev(lambda x: conv(x.view(1, 6, 1, 1)).view(6))(torch.zeros(6))
    stats = jacobian_singular_values(nn.Sequential(conv), scope="weights", method="exact")["0"]
    torch.testing.assert_close(stats.values[0], torch.linalg.svdvals(operator), atol=1e-6, rtol=0)


def test_fft_values_of_a_depthwise_circular_conv_equal_its_exact_values():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", groups=4, bias=False)
    x = torch.randn(2, 4, 5, 5)
    exact = jacobian_singular_values(nn.Sequential(conv), x, scope="end_to_end", method="exact")[END_TO_END]
    fft = conv_singular_values_fft(conv.weight, (5, 5), groups=4)
    assert fft.shape == (4 * 25,)
    for row in exact.values:
        torch.testing.assert_close(row, fft, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="`groups`"):
        conv_singular_values_fft(conv.weight, (5, 5), groups=3)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_attention_in_proj_is_read_as_its_query_key_value_blocks():
    model = Attention()
    result = jacobian_singular_values(model, scope="weights", method="exact")
    w = model.attn.in_proj_weight
    assert list(result) == ["attn.in_proj_weight", "attn.out_proj", "head"]
    torch.testing.assert_close(result["attn.in_proj_weight"].values[0], pooled(w[:8], w[8:16], w[16:]))
    assert result["attn.in_proj_weight"].shape == (8, 8) and result["attn.in_proj_weight"].groups == 3


def test_gpt2_conv1d_weights_in_their_true_orientation_and_the_tied_head_under_its_linear():
    model = tiny_gpt2()
    result = jacobian_singular_values(model, scope="weights", method="exact")
    assert "transformer.wte" not in result and "lm_head" in result  # the tied head is the Linear that uses it
    torch.testing.assert_close(result["lm_head"].values[0], pooled(model.lm_head.weight))
    c_attn = model.transformer.h[0].attn.c_attn.weight  # stored [in, out] = [32, 96]
    stats = result["transformer.h.0.attn.c_attn"]
    assert stats.shape == (96, 32)  # [out, in]
    torch.testing.assert_close(stats.values[0], pooled(c_attn.T))
    assert {s.shape for k, s in result.items() if k.endswith("c_fc")} == {(128, 32)}


def test_parameters_choose_the_layers():
    model = tiny_gpt2()
    selection = select_parameters(model, include="transformer.h.1.mlp.*.weight")
    assert list(jacobian_singular_values(model, scope="weights", parameters=selection)) == [
        "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj",
    ]
    assert list(jacobian_singular_values(model, scope="weights", parameters="lm_head.weight")) == ["lm_head"]
    with pytest.raises(ValueError, match="another module"):
        jacobian_singular_values(tiny_gpt2(), scope="weights", parameters=selection)


# ------------------------------------------------------------------------------------------- token models
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_end_to_end_of_token_models_starts_at_the_embedding_output(family):
    build = {"bert": tiny_bert_classifier, "gpt2": tiny_gpt2, "llama": tiny_llama}[family]
    model = build()
    seq = 8 if family == "bert" else 4
    batch = token_batch(3, seq, labels="cls" if family == "bert" else "lm")
    module = HFModule(model)  # forward(**batch) returns the model's ModelOutput (with a loss: labels are given)
    stats = jacobian_singular_values(module, batch, scope="end_to_end", method="exact")[END_TO_END]
    expected = hf_embedding_jacobian_values(model, batch)
    out = 3 if family == "bert" else seq * 64
    assert stats.shape == (out, seq * 32) and stats.num_examples == 3
    torch.testing.assert_close(stats.values, expected.float(), atol=2e-5, rtol=1e-4)
    # the bare transformers model and the token ids alone (no mask) give a Jacobian of the same size
    ids_only = jacobian_singular_values(model, batch["input_ids"], scope="end_to_end", method="exact")[END_TO_END]
    assert ids_only.shape == stats.shape


def test_bert_layerwise_values_equal_hand_built_layer_jacobians():
    model = tiny_bert_classifier().eval()
    batch = token_batch(2, labels="cls")
    wanted = ["bert.encoder.layer.0.intermediate.dense", "bert.pooler.dense", "classifier"]
    result = jacobian_singular_values(HFModule(model), batch, method="exact", layers=["model." + k for k in wanted])
    assert list(result) == ["model." + k for k in wanted]
    layer = model.bert.encoder.layer[0].intermediate
    x = first_input(layer.dense, model, batch)  # [2, 8, 32]
    pre = layer.dense(x)
    d = derivative(layer.intermediate_act_fn, pre)  # gelu'(pre), [2, 8, 64]
    for i in range(2):  # block diagonal over the 8 tokens: diag(gelu') W per token
        expected = pooled(*[torch.diag(d[i, t]) @ layer.dense.weight for t in range(8)])
        torch.testing.assert_close(result["model." + wanted[0]].values[i], expected, atol=1e-5, rtol=1e-4)
    assert result["model." + wanted[0]].shape == (8 * 64, 8 * 32)
    pooler = model.bert.pooler.dense
    h = first_input(pooler, model, batch)  # the first token's hidden state, [2, 32]
    d = 1 - torch.tanh(pooler(h)) ** 2
    for i in range(2):
        torch.testing.assert_close(result["model.bert.pooler.dense"].values[i], pooled(torch.diag(d[i]) @ pooler.weight), atol=1e-5, rtol=1e-4)
    for row in result["model.classifier"].values:  # paired with the logits: the weight itself
        torch.testing.assert_close(row, pooled(model.classifier.weight), atol=1e-6, rtol=1e-5)


def test_gpt2_layerwise_through_conv1d_and_the_tied_head():
    model = tiny_gpt2().eval()
    batch = token_batch(2, 4)
    result = jacobian_singular_values(model, batch, method="exact", layers=["transformer.h.0.mlp.c_fc", "lm_head"])
    assert list(result) == ["transformer.h.0.mlp.c_fc", "lm_head"]
    mlp = model.transformer.h[0].mlp
    x = first_input(mlp.c_fc, model, batch)
    d = derivative(mlp.act, mlp.c_fc(x))  # c_fc(x) = x W + b with W stored [in, out]
    for i in range(2):
        expected = pooled(*[torch.diag(d[i, t]) @ mlp.c_fc.weight.T for t in range(4)])
        torch.testing.assert_close(result["transformer.h.0.mlp.c_fc"].values[i], expected, atol=1e-5, rtol=1e-4)
    head = pooled(*[model.lm_head.weight] * 4)  # the tied head, paired with the logits, once per token
    for row in result["lm_head"].values:
        torch.testing.assert_close(row, head, atol=1e-5, rtol=1e-5)


def test_llama_layerwise_gate_projection_and_tied_head():
    model = tiny_llama().eval()
    batch = token_batch(2, 4)
    result = jacobian_singular_values(model, batch, method="exact", layers=["model.layers.1.mlp.gate_proj", "lm_head"])
    mlp = model.model.layers[1].mlp
    x = first_input(mlp.gate_proj, model, batch)
    gate = mlp.gate_proj(x)
    scale = mlp.up_proj(x) * derivative(mlp.act_fn, gate)  # down_proj's input: act(gate(x)) * up(x), up held fixed
    for i in range(2):
        expected = pooled(*[torch.diag(scale[i, t]) @ mlp.gate_proj.weight for t in range(4)])
        torch.testing.assert_close(result["model.layers.1.mlp.gate_proj"].values[i], expected, atol=1e-5, rtol=1e-4)
    for row in result["lm_head"].values:
        torch.testing.assert_close(row, pooled(*[model.lm_head.weight] * 4), atol=1e-5, rtol=1e-5)


def test_token_models_leave_no_trace():
    model = tiny_bert_classifier()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    batch = token_batch(2, labels="cls")
    for scope in ("weights", "layerwise", "end_to_end"):
        jacobian_singular_values(HFModule(model), batch, scope=scope, method="estimate", lanczos_steps=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules()) and all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------- where the Jacobian starts
class TwoInputs(nn.Module):
    """``forward(image, label)``: a floating input and an integer one embedded on the side."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.label_embedding = nn.Embedding(3, 5)
        self.net = nn.Linear(6, 2)

    def forward(self, image, label):
        return {"scores": self.net(image) + self.label_embedding(label)[:, :2]}


def test_dict_batches_start_at_the_floating_entry_or_at_input_key():
    model = TwoInputs()
    batch = {"image": torch.randn(3, 6), "label": torch.tensor([0, 1, 2])}
    auto = jacobian_singular_values(model, batch, scope="end_to_end", method="exact")[END_TO_END]
    named = jacobian_singular_values(model, batch, scope="end_to_end", method="exact", input_key="image")
    for row in auto.values:  # d scores / d image = W, read from the dict output's first tensor
        torch.testing.assert_close(row, pooled(model.net.weight))
    torch.testing.assert_close(named[END_TO_END].values, auto.values)
    by_label = jacobian_singular_values(model, batch, scope="end_to_end", method="exact", input_key="label")
    assert by_label[END_TO_END].shape == (2, 5)  # an integer entry: from the output of its embedding


def test_integer_inputs_without_embedding_are_refused_with_the_fix():
    class Cast(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, ids):
            return self.lin(ids.float())

    with pytest.raises(ValueError, match="input_key"):
        jacobian_singular_values(Cast(), torch.ones(2, 3, dtype=torch.long), scope="end_to_end")


def test_operations_without_second_derivative_fall_back_to_forward_mode_products():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 9), nn.Hardsigmoid(), nn.Linear(9, 2))  # no double backward of hardsigmoid
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(6)) * 4
    with torch.no_grad():
        pre = model[0](x)
        slope = ((pre > -3) & (pre < 3)).float() / 6  # hardsigmoid'(pre)
    exact = jacobian_singular_values(model, x, method="exact", layers="0")["0"]  # 9 x 6: columns J e_j
    for i in range(3):
        torch.testing.assert_close(exact.values[i], pooled(torch.diag(slope[i]) @ model[0].weight), atol=1e-6, rtol=1e-5)
    estimate = jacobian_singular_values(model, x, method="estimate", layers="0", lanczos_steps=2, num_probes=6)["0"]
    assert estimate.method == "estimate"
    assert estimate.mean_sq == pytest.approx(exact.mean_sq, rel=1e-5)  # 6 basis probes: exact
    assert exact.max * 0.98 <= estimate.max <= exact.max * (1 + 1e-5)


def test_timm_mobilenet_with_depthwise_convs_and_hardsigmoid():
    from tests.zoo import timm_model

    model = timm_model("mobilenetv3_small_100")
    weights = jacobian_singular_values(model, scope="weights", method="exact", layers="blocks.1.*")
    depthwise = model.blocks[1][0].conv_dw
    stats = weights["blocks.1.0.conv_dw"]
    assert stats.groups == depthwise.groups == depthwise.out_channels and stats.shape == (1, 9)
    torch.testing.assert_close(stats.values[0], pooled(*depthwise.weight.reshape(depthwise.groups, 1, 9)))
    x = torch.randn(2, 3, 32, 32)
    cheap = {"power_iters": 2, "num_probes": 1, "lanczos_steps": 2}
    layerwise = jacobian_singular_values(model, x, method="estimate", layers="blocks.1.*", **cheap)
    assert set(layerwise) <= set(weights) and "blocks.1.0.conv_dw" in layerwise
