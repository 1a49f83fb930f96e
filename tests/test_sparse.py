"""Sparse execution of masked Linear layers: values equal the masked dense computation, compact trained state,
dense state-dict keys, module identity, copies, and the per-layer report."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune_init import apply_masks, get_masks
from lightning_prune_init.sparse import (
    SparseLinear,
    disable_sparse_execution,
    enable_sparse_execution,
    sparse_modules,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def _close(actual, expected, rtol=1e-5):
    """Within ``rtol`` of the expected values, relative to the expected tensor's largest entry."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.detach().abs().max()))


def _mlp(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 32, bias=bias), nn.ReLU(), nn.Linear(32, 16, bias=bias), nn.ReLU(), nn.Linear(16, 5))


def _random_masks(model, density=0.2, seed=0, names=None):
    g = torch.Generator().manual_seed(seed)
    names = names or [n for n, p in model.named_parameters() if p.dim() == 2]
    return {n: torch.rand(model.get_parameter(n).shape, generator=g) < density for n in names}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24), (1030, 24)])
@pytest.mark.parametrize("density", [0.2, 0.02])
def test_outputs_and_gradients_equal_the_masked_dense_computation(bias, shape, density):
    """Both layouts of the kernels: feature-major (few rows, 20%), batch-major (>= 1024 rows, or 2%)."""
    dense = _mlp(bias=bias)
    masks = _random_masks(dense, density=density)
    apply_masks(dense, masks)
    sparse = copy.deepcopy(dense)
    report = enable_sparse_execution(sparse, "on")
    assert report.switched == ["0.weight", "2.weight", "4.weight"]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    x_dense, x_sparse = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_dense, out_sparse = dense(x_dense), sparse(x_sparse)
    _close(out_sparse, out_dense)
    assert out_sparse.is_contiguous() and out_sparse.shape == out_dense.shape
    g = torch.randn(out_dense.shape, generator=torch.Generator().manual_seed(2))
    out_dense.backward(g)
    out_sparse.backward(g)
    _close(x_sparse.grad, x_dense.grad)
    for name, mask in masks.items():
        layer = sparse.get_submodule(name.rpartition(".")[0])
        dense_grad = dense.get_parameter(name).grad
        _close(layer.weight_values.grad, dense_grad[mask])  # the gradient at the kept entries only, CSR order
        assert layer.weight_values.grad.shape == (int(mask.sum()),)
    if bias:
        _close(sparse[0].bias.grad, dense[0].bias.grad)


def test_training_steps_match_masked_dense_training_with_compact_optimizer_state():
    dense = _mlp()
    masks = _random_masks(dense, density=0.1)
    sparse = copy.deepcopy(dense)
    opt_dense = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    apply_masks(dense, masks, optimizers=[opt_dense])
    apply_masks(sparse, masks)
    enable_sparse_execution(sparse, "on")
    opt_sparse = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        x, y = torch.randn(16, 24, generator=g), torch.randint(0, 5, (16,), generator=g)
        for model, opt in ((dense, opt_dense), (sparse, opt_sparse)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    dense_state, sparse_state = dense.state_dict(), sparse.state_dict()
    assert list(sparse_state) == list(dense_state)  # the plain keys, in the same order
    for name, mask in masks.items():
        _close(sparse_state[name], dense_state[name])
        assert torch.count_nonzero(sparse_state[name][~mask]) == 0  # exact zeros at pruned entries
        values = sparse.get_submodule(name.rpartition(".")[0]).weight_values
        assert opt_sparse.state[values]["momentum_buffer"].shape == (int(mask.sum()),)  # nnz-sized state
    assert all(p.dim() <= 1 for p in sparse.parameters())  # nothing of size numel is trained


def test_state_dict_loads_strictly_both_ways_and_with_weights_only():
    model = _mlp()
    masks = _random_masks(model, density=0.3)
    apply_masks(model, masks)
    enable_sparse_execution(model, "on")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    plain = _mlp(seed=5)
    assert plain.load_state_dict(loaded, strict=True) is not None
    for name, tensor in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], tensor)
    # a dense state dict loads into a model in sparse execution: the kept entries are read
    other = _mlp(seed=7)
    expected = {n: other.get_parameter(n).detach() * m for n, m in masks.items()}
    result = model.load_state_dict({k: v * masks[k] if k in masks else v for k, v in other.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in expected.items():
        assert torch.equal(model.state_dict()[name], value)
        assert torch.equal(model.get_submodule(name[:-7]).weight_values.detach(), value[masks[name]])
    # non-zeros at pruned entries are dropped, and said so
    with pytest.warns(UserWarning, match="non-zero value") as caught:
        model.load_state_dict(other.state_dict())
    dropped = {str(w.message).split(":")[0]: str(w.message) for w in caught}
    assert sorted(dropped) == sorted(masks)
    assert f"{int((other[0].weight != 0)[~masks['0.weight']].sum())} non-zero value(s) at pruned entries" in dropped["0.weight"]
    assert torch.count_nonzero(model.state_dict()["0.weight"][~masks["0.weight"]]) == 0
    missing = model.load_state_dict({k: v for k, v in plain.state_dict().items() if k != "2.weight"}, strict=False)
    assert missing.missing_keys == ["2.weight"]
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        model.load_state_dict({**plain.state_dict(), "0.weight": torch.zeros(3, 3)})


def test_module_identity_copies_pickle_devices_and_dense_reads():
    model = _mlp()
    masks = _random_masks(model, density=0.25)
    first = model[0]
    enable_sparse_execution(model, "on", masks=masks)
    assert model[0] is first and isinstance(first, nn.Linear) and isinstance(first, SparseLinear)
    assert (first.in_features, first.out_features) == (24, 32)
    assert torch.equal(first.pruning_masks()["weight"], masks["0.weight"])
    assert torch.equal(first.weight, first.state_dict()["weight"])  # a dense read for monitors and user code
    x = torch.randn(4, 24)
    expected = model(x)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(copied[0], SparseLinear)
        assert torch.equal(copied(x), expected)
        assert copied[0].weight_values.data_ptr() != first.weight_values.data_ptr()
    doubled = copy.deepcopy(model).double()
    assert doubled[0].weight_values.dtype == torch.float64 and doubled[0].structure.col.dtype == torch.int32
    _close(doubled(x.double()).float(), expected)
    # the dense read is differentiable: code that computes with `weight` still trains the kept values
    (first.weight ** 2).sum().backward()
    _close(first.weight_values.grad, 2 * first.weight_values.detach())
    with pytest.raises(AttributeError, match="read-only"):
        first.weight = torch.zeros(32, 24)


def test_enable_reports_every_layer_detaches_dense_masks_and_disable_restores_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))
    masks = _random_masks(model, density=0.5, names=["0.weight", "2.weight"])
    apply_masks(model, masks)
    report = enable_sparse_execution(model, "on")
    assert report.decisions == {"0.weight": False, "2.weight": True, "4.weight": False}
    assert "Conv2d: no sparse path measured faster" in report.layers["0.weight"].reason
    assert report.layers["4.weight"].reason == "no mask" and report.layers["4.weight"].density is None
    assert report.layers["2.weight"].density == pytest.approx(float(masks["2.weight"].float().mean()))
    assert "0.weight" in get_masks(model)  # the conv stays masked by the hooks
    assert list(sparse_modules(model)) == ["2.weight"]
    assert "2.weight" in str(report) and "sparse" in str(report)
    weights = model.state_dict()
    back = disable_sparse_execution(model)
    assert back.decisions == {"2.weight": False} and type(model[2]) is nn.Linear
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(get_masks(model)["2.weight"], masks["2.weight"])  # enforced again by the hooks
    with torch.no_grad():
        model[2].weight.add_(1.0)
    model(torch.randn(1, 1, 6, 6))
    assert torch.count_nonzero(model[2].weight[~masks["2.weight"]]) == 0


def test_auto_records_shapes_measures_and_follows_the_threshold():
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16), nn.Linear(16, 4))
    masks = _random_masks(model, density=0.1, names=["0.weight", "2.weight", "3.weight"])

    class SkipLast(nn.Module):  # the last layer is never called: it cannot be timed
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net[2](self.net[1](self.net[0](x)))

    wrapped = SkipLast(model)
    wrapped_masks = {f"net.{k}": v for k, v in masks.items()}
    inputs = torch.randn(6, 24)
    rng = torch.get_rng_state()
    always = enable_sparse_execution(
        copy.deepcopy(wrapped), "auto", masks=wrapped_masks, example_inputs=inputs, threshold=1e9, rounds=1
    )
    assert torch.equal(rng, torch.get_rng_state())  # the recording forward and the timing leave no trace
    assert always.decisions == {"net.0.weight": True, "net.2.weight": True, "net.3.weight": False}
    assert always.layers["net.3.weight"].reason == "not called by example_inputs; left dense"
    for name in ("net.0.weight", "net.2.weight"):
        layer = always.layers[name]
        assert layer.dense_ms > 0 and layer.sparse_ms > 0 and layer.decide_s > 0 and layer.ratio is not None
    assert always.decide_s == pytest.approx(sum(x.decide_s for x in always.layers.values()))
    never = enable_sparse_execution(
        copy.deepcopy(wrapped), "auto", masks=wrapped_masks, example_inputs=torch.randn(6, 24), threshold=1e-9, rounds=1
    )
    assert not any(never.decisions.values())
    with pytest.raises(ValueError, match="mode='auto' times each layer at its real input shape: pass `example_inputs`"):
        enable_sparse_execution(copy.deepcopy(wrapped), "auto", masks=wrapped_masks)


def test_decisions_switch_exactly_those_layers_or_refuse():
    model = _mlp()
    masks = _random_masks(model)
    report = enable_sparse_execution(copy.deepcopy(model), "auto", masks=masks, decisions={"0.weight": True, "2.weight": False})
    assert report.switched == ["0.weight"]
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"cannot run sparse \{'4.weight': 'no mask'\}"):
        enable_sparse_execution(model, "on", masks={"0.weight": masks["0.weight"]}, decisions={"4.weight": True})
    with pytest.raises(ValueError, match=r"unknown \['nope.weight'\]"):
        enable_sparse_execution(model, "on", masks=masks, decisions={"nope.weight": True})
    assert not sparse_modules(model) and all(torch.equal(before.state_dict()[k], v) for k, v in model.state_dict().items())


def test_ineligible_layers_stay_dense_with_a_reason():
    class Sub(nn.Linear):
        pass

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), Sub(4, 4)
            self.b.weight = self.a.weight
            self.h = nn.Linear(4, 4).to(torch.bfloat16)

    model = Tied()
    masks = {n: torch.ones(4, 4, dtype=torch.bool) for n in ("a.weight", "c.weight", "h.weight")}
    report = enable_sparse_execution(model, "on", masks=masks)
    assert not report.switched
    assert "tied" in report.layers["a.weight"].reason
    assert "only nn.Linear is switched" in report.layers["c.weight"].reason
    assert "bfloat16" in report.layers["h.weight"].reason
    with pytest.raises(ValueError, match="no masks"):
        enable_sparse_execution(nn.Linear(2, 2), "on")
    with pytest.raises(ValueError, match="`mode` must be one of 'auto', 'on'"):
        enable_sparse_execution(model, "off", masks=masks)


def _masks_package_reports_protocol() -> bool:
    probe = nn.Linear(2, 2)
    enable_sparse_execution(probe, "on", masks={"weight": torch.ones(2, 2, dtype=torch.bool)})
    return "weight" in get_masks(probe)


@pytest.mark.skipif(not _masks_package_reports_protocol(), reason="get_masks reads pruning_masks() once the masks package lands")
def test_get_masks_reports_the_layers_in_sparse_execution():
    model = _mlp()
    masks = _random_masks(model)
    apply_masks(model, masks)
    enable_sparse_execution(model, "on", masks=masks, decisions={"0.weight": True})
    reported = get_masks(model)
    assert reported.keys() == masks.keys()
    assert all(torch.equal(reported[n], m) for n, m in masks.items())


def test_autocast_runs_the_csr_kernels_in_float32():
    model = _mlp()
    masks = _random_masks(model)
    enable_sparse_execution(model, "on", masks=masks)
    x = torch.randn(6, 24)
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.bfloat16())  # bf16 activations, as under precision="bf16-mixed"
        out.float().sum().backward()
    assert out.dtype == torch.float32
    _close(out, model(x.bfloat16().float()))
    assert (out - expected).abs().max() < 0.1  # only the bf16 rounding of the input differs
    assert model[0].weight_values.grad.dtype == torch.float32 and model[0].weight_values.grad.abs().sum() > 0


def test_reset_parameters_draws_the_kept_values_like_nn_linear():
    layer = nn.Linear(400, 3)
    enable_sparse_execution(layer, "on", masks={"weight": torch.rand(3, 400) < 0.5})
    before = layer.weight_values.detach().clone()
    layer.reset_parameters()
    values = layer.weight_values.detach()
    assert not torch.equal(values, before) and values.abs().max() <= 1 / 20  # U(-1/sqrt(400), 1/sqrt(400))
    assert torch.count_nonzero(layer.weight[~layer.pruning_masks()["weight"]]) == 0
