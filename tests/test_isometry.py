"""Approximate isometry repair: values against the definition, svdvals, a plain SGD loop and exact zeros."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_prune_init.isometry as isometry
from lightning_prune_init.init import init_model_
from lightning_prune_init.isometry import (
    IsometryReport,
    approximate_isometry,
    best_possible_error,
    orthogonality_error,
    orthogonality_errors,
)

HIDDEN = [f"{i}.weight" for i in range(1, 6)]  # the 100x100 layers of MLP-7


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The matrices here are small: on a shared 2-core machine, intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _snip_masks(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, sparsity: float) -> dict:
    """SNIP by hand: global top-k of |dL/dw * w| over all conv/linear weights, one batch, cross-entropy."""
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    F.cross_entropy(model(inputs), labels).backward()
    model.train(was_training)
    scores = torch.cat([(p.grad * p).abs().flatten() for p in weights.values()])
    keep = round(scores.numel() * (1 - sparsity))
    flat = torch.zeros_like(scores, dtype=torch.bool)
    flat[torch.topk(scores, keep).indices] = True
    model.zero_grad(set_to_none=True)
    masks, offset = {}, 0
    for name, p in weights.items():
        masks[name] = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return masks


def _mlp7() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 100), *[nn.Linear(100, 100) for _ in range(5)], nn.Linear(100, 10))
    init_model_(model, "orthogonal", generator=_gen(0))
    return model


@pytest.fixture(scope="module")
def pruned_mlp7():
    """Linear MLP-7 (width 100, orthogonal init), pruned to 90% by SNIP, masks applied to the weights."""
    model = _mlp7()
    g = _gen(1)
    masks = _snip_masks(model, torch.randn(100, 784, generator=g), torch.randint(0, 10, (100,), generator=g), 0.9)
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
    return model, masks


@pytest.fixture(scope="module")
def faithful_mlp7(pruned_mlp7):
    """The faithful repair (defaults: SGD, lr 0.1, 10,000 steps, target I) of the pruned MLP-7."""
    model, masks = pruned_mlp7
    repaired = copy.deepcopy(model)
    report = approximate_isometry(repaired, masks=masks, progress=False)
    return repaired, report


def _literal_error(weight: torch.Tensor, mask: torch.Tensor | None, gain: float = 1.0) -> float:
    w = weight.double() * (1 if mask is None else mask.double())
    m = w.reshape(w.shape[0], -1)
    return torch.linalg.matrix_norm(m @ m.T - gain**2 * torch.eye(m.shape[0], dtype=m.dtype)).item()


# --- the error and its lower bound -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(20, 50), (50, 20), (16, 3, 3, 3), (8, 16, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, 1.7])
def test_orthogonality_error_matches_the_definition(shape, gain):
    g = _gen(2)
    w = torch.randn(shape, generator=g) * 0.2
    mask = torch.rand(shape, generator=g) < 0.4
    assert orthogonality_error(w, mask, gain=gain).item() == pytest.approx(_literal_error(w, mask, gain), rel=1e-5)
    assert orthogonality_error(w, gain=gain).item() == pytest.approx(_literal_error(w, None, gain), rel=1e-5)
    m = (w * mask).double().reshape(shape[0], -1)
    small = m.T @ m if m.shape[0] > m.shape[1] else m @ m.T
    reachable = torch.linalg.matrix_norm(small - gain**2 * torch.eye(small.shape[0], dtype=m.dtype)).item()
    assert orthogonality_error(w, mask, target="reachable", gain=gain).item() == pytest.approx(reachable, rel=1e-5)


def test_orthogonality_error_through_singular_values():
    w = torch.randn(30, 12, generator=_gen(3), dtype=torch.float64)
    sv = torch.linalg.svdvals(w)
    # WWᵀ (30x30) has the 12 σ² and 18 zero eigenvalues
    expected = math.sqrt(((sv**2 - 1) ** 2).sum().item() + 18)
    assert orthogonality_error(w).item() == pytest.approx(expected, rel=1e-10)
    assert orthogonality_error(w, target="reachable").item() == pytest.approx(
        math.sqrt(((sv**2 - 1) ** 2).sum().item()), rel=1e-10
    )


def test_best_possible_error_cases():
    dense_conv = torch.empty(64, 3, 3, 3)  # fan_in 27 < c_out 64
    assert best_possible_error(dense_conv) == pytest.approx(math.sqrt(64 - 27))
    assert best_possible_error(dense_conv, target="reachable") == 0.0
    assert best_possible_error(dense_conv, gain=2.0) == pytest.approx(4 * math.sqrt(37))
    square = torch.empty(6, 6)
    mask = torch.ones(6, 6, dtype=torch.bool)
    assert best_possible_error(square, mask) == 0.0
    mask[2] = False  # a pruned-away output unit
    assert best_possible_error(square, mask) == pytest.approx(1.0)
    hall = torch.ones(6, 6, dtype=torch.bool)
    hall[:3, 2:] = False  # three rows share only two columns: structural rank 5, no unit is empty
    assert best_possible_error(square, hall) == pytest.approx(1.0)
    assert best_possible_error(square, hall, target="reachable") == pytest.approx(1.0)


def test_structural_rank_fallback_matches_scipy():
    g = _gen(4)
    for rows, cols, density in [(20, 30, 0.05), (30, 20, 0.08), (40, 40, 0.03), (10, 50, 0.5)]:
        mask = torch.rand(rows, cols, generator=g) < density
        assert isometry._matching_size(mask) == isometry._structural_rank(mask)


def test_best_possible_is_attained_by_a_matching():
    # the bound is tight: gain on the entries of a maximum matching gives exactly gain² sqrt(c_out - r)
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[0, 1] = mask[1, 1] = mask[2, 3] = mask[3, 3] = mask[4, 6] = True  # rank 3
    w = torch.zeros(5, 7)
    w[0, 1] = w[2, 3] = w[4, 6] = 1.0
    assert best_possible_error(w, mask) == pytest.approx(math.sqrt(2))
    assert orthogonality_error(w, mask).item() == pytest.approx(math.sqrt(2))


# --- acceptance 3: the faithful repair of a SNIP-pruned linear MLP-7 ----------------------------------------
def test_faithful_repair_of_mlp7(pruned_mlp7, faithful_mlp7):
    model, masks = pruned_mlp7
    repaired, report = faithful_mlp7
    assert isinstance(report, IsometryReport)
    assert (report.solver, report.target, report.steps, report.lr) == ("sgd", "identity", 10_000, 0.1)
    assert list(report.layers) == [f"{i}.weight" for i in range(7)]
    for name, layer in report.layers.items():
        assert layer.steps == 10_000
        assert layer.error_before == pytest.approx(_literal_error(model.get_parameter(name).detach(), None), rel=1e-4)
        assert layer.error_after == pytest.approx(
            _literal_error(repaired.get_parameter(name).detach(), None), rel=1e-4, abs=1e-5
        )
        assert layer.best_possible == best_possible_error(model.get_parameter(name), masks[name])
        assert layer.error_after >= layer.best_possible - 1e-5
    before = sum(report.layers[n].error_before for n in HIDDEN)
    after = sum(report.layers[n].error_after for n in HIDDEN)
    assert before / after >= 10
    for name in HIDDEN:
        w = repaired.get_parameter(name).detach()
        assert w.abs().max() > 0
        assert torch.all(w[~masks[name]] == 0)  # exactly zero
        sv = torch.linalg.svdvals(w)
        assert abs(sv.mean().item() - 1) < 0.05
    for name, mask in masks.items():
        assert torch.all(repaired.get_parameter(name)[~mask] == 0)
    for i in range(7):  # biases untouched
        assert torch.equal(repaired[i].bias, model[i].bias)


def test_cg_reaches_a_lower_objective_than_faithful_sgd(pruned_mlp7, faithful_mlp7):
    model, masks = pruned_mlp7
    _, faithful = faithful_mlp7
    repaired = copy.deepcopy(model)
    report = approximate_isometry(repaired, masks=masks, solver="cg", progress=False)
    assert report.error_after <= faithful.error_after
    for name, layer in report.layers.items():
        assert layer.error_after <= faithful.layers[name].error_after + 1e-6
        assert layer.steps < 10_000  # converged
        assert torch.all(repaired.get_parameter(name)[~masks[name]] == 0)
    for name in HIDDEN:
        sv = torch.linalg.svdvals(repaired.get_parameter(name).detach())
        assert torch.allclose(sv, torch.ones_like(sv), atol=1e-3)


def test_batched_sgd_equals_a_plain_per_layer_loop(pruned_mlp7):
    # float64: once a layer is near its minimum, the unsquared SGD oscillates and amplifies float32 rounding
    # differences between two correct implementations; in float64 they agree to ~1e-11 after 100 steps.
    model, masks = pruned_mlp7
    model = copy.deepcopy(model).double()
    repaired = copy.deepcopy(model)
    approximate_isometry(repaired, masks=masks, steps=100, progress=False)
    for name, mask in masks.items():
        w = model.get_parameter(name).detach().clone().requires_grad_(True)
        optimizer = torch.optim.SGD([w], lr=0.1)
        c = mask.double()
        for _ in range(100):
            optimizer.zero_grad()
            a = w * c
            loss = torch.linalg.matrix_norm(a @ a.T - torch.eye(a.shape[0], dtype=a.dtype))
            loss.backward()
            optimizer.step()
        assert torch.allclose(repaired.get_parameter(name), (w * c).detach(), rtol=0, atol=1e-8), name


# --- acceptance 4: conv nets with BN and shortcuts ---------------------------------------------------------------
class _VGGish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in (32, "M", 32, "M", 64):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layers = nn.Sequential(_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.layers(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def _non_weight_state(model: nn.Module) -> dict[str, torch.Tensor]:
    weights = {n for n, p in model.named_parameters() if p.dim() > 1}
    return {k: v.clone() for k, v in model.state_dict().items() if k not in weights}


@pytest.mark.parametrize("net", [_VGGish, _ResNet])
@pytest.mark.parametrize("solver", ["sgd", "cg"])
def test_conv_nets_all_weights_repaired_bn_untouched(net, solver):
    torch.manual_seed(0)
    model = net()
    init_model_(model, "orthogonal", generator=_gen(5))
    with torch.no_grad():  # non-trivial BN affine parameters and statistics, to see that they stay
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
    g = _gen(6)
    masks = _snip_masks(model, torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g), 0.8)
    last_conv = [n for n in masks if n.endswith("weight") and masks[n].dim() == 4][-1]
    masks[last_conv][5] = False  # a whole output unit pruned away: best possible error >= 1
    other = _non_weight_state(model)
    report = approximate_isometry(model, masks=masks, solver=solver, steps=2000, progress=False)

    conv_linear = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(report.layers) == {f"{n}.weight" for n in conv_linear}
    if net is _ResNet:
        assert {"layers.1.shortcut.0.weight", "layers.2.shortcut.0.weight"} <= set(report.layers)
    for k, v in _non_weight_state(model).items():  # biases, BN parameters and buffers
        assert torch.equal(v, other[k]), k
    for name, mask in masks.items():
        assert torch.all(model.get_parameter(name)[~mask] == 0), name
    for name, layer in report.layers.items():
        assert layer.best_possible == best_possible_error(model.get_parameter(name), masks[name])
        assert layer.error_after >= layer.best_possible - 1e-4
        assert layer.error_after <= layer.error_before
    first = "features.0.weight" if net is _VGGish else "conv.weight"
    c_out, fan_in = report.layers[first].c_out, report.layers[first].fan_in
    if fan_in < c_out:  # 3·3·3 = 27 < 32 in the VGG: unreachable, best = sqrt(c_out - 27) with a dense enough mask
        assert first in report.unreachable()
    assert last_conv in report.unreachable()
    assert report.layers[last_conv].best_possible >= 1.0
    assert report.error_after - report.best_possible < 0.5 * (report.error_before - report.best_possible)
    if solver == "cg":  # converged: at the lowest error the masks allow
        for layer in report.layers.values():
            assert layer.error_after == pytest.approx(layer.best_possible, abs=1e-2)


# --- acceptance 5: no data ---------------------------------------------------------------------------------------
def test_repair_needs_no_data_and_runs_no_forward():
    model = _mlp7()
    masks = {n: torch.rand(p.shape, generator=_gen(7)) < 0.3 for n, p in model.named_parameters() if p.dim() > 1}

    def refuse(*_):
        raise AssertionError("the repair must not run the model")

    for m in model.modules():
        m.register_forward_pre_hook(refuse)
    report = approximate_isometry(model, masks=masks, steps=50, progress=False)
    assert report.error_after < report.error_before


# --- options -------------------------------------------------------------------------------------------------
def test_tol_stops_each_layer_within_tol_of_its_best(pruned_mlp7):
    model, masks = pruned_mlp7
    repaired = copy.deepcopy(model)
    report = approximate_isometry(repaired, masks=masks, tol=0.5, steps=3000, progress=False)
    stopped = [layer for layer in report.layers.values() if layer.steps < 3000]
    assert len(stopped) >= 5
    for layer in stopped:
        assert layer.error_after <= layer.best_possible + 0.5 + 1e-4
        assert layer.error_after > layer.best_possible + 0.1  # it stopped, not converged further


def test_reachable_target_and_gain_on_a_wide_first_conv():
    conv = nn.Conv2d(2, 32, 3)  # fan_in 18 < c_out 32
    init_model_(conv, "vs-he", generator=_gen(8))
    report = approximate_isometry(conv, solver="cg", progress=False)
    assert report.layers["weight"].best_possible == pytest.approx(math.sqrt(32 - 18))
    assert report.layers["weight"].error_after == pytest.approx(math.sqrt(14), abs=1e-3)
    report = approximate_isometry(conv, solver="cg", target="reachable", gain=2.0, progress=False)
    assert report.layers["weight"].best_possible == 0.0
    assert report.layers["weight"].error_after < 1e-3
    sv = torch.linalg.svdvals(conv.weight.detach().reshape(32, 18))
    assert torch.allclose(sv, torch.full_like(sv, 2.0), atol=1e-3)


def test_reachable_target_with_faithful_sgd():
    lin = nn.Linear(10, 40, bias=False)  # c_out 40 > fan_in 10
    init_model_(lin, "vs-lecun", generator=_gen(9))
    report = approximate_isometry(lin, steps=3000, target="reachable", progress=False)
    assert report.layers["weight"].error_after < 0.3
    assert report.layers["weight"].error_before > 1.0


def test_cg_escapes_a_collapsed_singular_value():
    lin = nn.Linear(16, 16, bias=False)
    init_model_(lin, "orthogonal", generator=_gen(10))
    with torch.no_grad():
        lin.weight[3] = 0  # a stationary point of the error (a saddle), though the layer is dense
    sgd = copy.deepcopy(lin)
    report = approximate_isometry(sgd, steps=200, progress=False)
    assert report.layers["weight"].error_after == pytest.approx(1.0, abs=1e-5)  # plain SGD stays at the saddle
    report = approximate_isometry(lin, solver="cg", progress=False)
    assert report.layers["weight"].error_after < 1e-3


def test_dtypes_are_kept():
    for dtype, bound in ((torch.float64, 1e-3), (torch.bfloat16, 0.05)):  # bf16: rounding of the final weights
        model = _mlp7().to(dtype)
        masks = {n: torch.rand(p.shape, generator=_gen(11)) < 0.3 for n, p in model.named_parameters() if p.dim() > 1}
        ids = {n: id(p) for n, p in model.named_parameters()}
        report = approximate_isometry(model, masks=masks, solver="cg", progress=False)
        assert {n: id(p) for n, p in model.named_parameters()} == ids
        for name, mask in masks.items():
            p = model.get_parameter(name)
            assert p.dtype == dtype
            assert torch.all(p[~mask] == 0)
            layer = report.layers[name]
            assert layer.error_after - layer.best_possible < bound
            assert layer.error_after == pytest.approx(_literal_error(p.detach(), None), abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    model = _mlp7().cuda()
    masks = {
        n: (torch.rand(p.shape, generator=_gen(12)) < 0.3).cuda() for n, p in model.named_parameters() if p.dim() > 1
    }
    report = approximate_isometry(model, masks=masks, solver="cg", progress=False)
    assert all(p.is_cuda for p in model.parameters())
    assert report.error_after < 1e-2 * report.error_before


# --- interruption ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["sgd", "cg"])
def test_keyboard_interrupt_leaves_consistent_weights(monkeypatch, pruned_mlp7, solver):
    model, masks = pruned_mlp7
    model = copy.deepcopy(model)
    with torch.no_grad():  # pruned entries non-zero on entry: the repair must zero them at once
        for name, mask in masks.items():
            p = model.get_parameter(name)
            p.add_(0.01 * (~mask))
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = {"n": 0}

    def interrupt_in_the_hidden_batch(group):
        if group.a.shape[0] == 5:  # the five 100x100 layers, solved after layer 0
            calls["n"] += 1
            if calls["n"] == 30:
                raise KeyboardInterrupt

    if solver == "sgd":
        real = isometry._sgd_step

        def interrupted(group, *args, **kwargs):
            interrupt_in_the_hidden_batch(group)
            return real(group, *args, **kwargs)

        monkeypatch.setattr(isometry, "_sgd_step", interrupted)
    else:
        real = isometry._ConjugateGradient.step

        def interrupted(self, *args, **kwargs):
            interrupt_in_the_hidden_batch(self.group)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(isometry._ConjugateGradient, "step", interrupted)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        approximate_isometry(model, masks=masks, solver=solver, steps=2000, progress=False)
    assert any("interrupted" in str(w.message) for w in caught)
    changed = 0
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all()
        if name in masks:
            assert torch.all(p[~masks[name]] == 0), name
            pruned = original[name] * masks[name]
            if not torch.equal(p, pruned):
                changed += 1
                assert orthogonality_error(p) < orthogonality_error(pruned)
        else:
            assert torch.equal(p, original[name])
    assert changed == 6  # layer 0 finished, the five layers of the interrupted batch were written back
    assert torch.equal(model.get_parameter("6.weight"), original["6.weight"] * masks["6.weight"])  # not reached


# --- report, progress, masks from the model, errors -----------------------------------------------------------
def test_report_metrics_table_and_dict(pruned_mlp7):
    model, masks = pruned_mlp7
    report = approximate_isometry(copy.deepcopy(model), masks=masks, steps=10, progress=False)
    metrics = report.metrics()
    assert metrics["isometry/error_before/1.weight"] == report.layers["1.weight"].error_before
    assert metrics["isometry/error_after/1.weight"] == report.layers["1.weight"].error_after
    assert metrics["isometry/error_after"] == pytest.approx(sum(x.error_after for x in report.layers.values()))
    as_dict = report.to_dict()
    assert as_dict["layers"]["6.weight"]["c_out"] == 10 and as_dict["layers"]["6.weight"]["steps"] == 10
    text = str(report)
    assert "1.weight" in text and "total" in text
    assert all(isinstance(x.time_s, float) and x.time_s >= 0 for x in report.layers.values())
    assert orthogonality_errors(model, masks)["1.weight"] == pytest.approx(report.layers["1.weight"].error_before)


def test_progress_bar_counts_every_step(monkeypatch):
    import tqdm.auto

    seen = {}
    real = tqdm.auto.tqdm

    class Recorder(real):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = open("/dev/null", "w")  # noqa: SIM115
            super().__init__(*args, **kwargs)
            seen["bar"] = self

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    model = _mlp7()
    approximate_isometry(model, steps=250, progress=True)
    bar = seen["bar"]
    assert bar.total == 250 * 3  # three batches of same-shape layers
    assert bar.n == bar.total


def test_masks_default_to_the_attached_ones():
    masking = pytest.importorskip("lightning_prune_init.masks")
    if not hasattr(masking, "apply_masks"):
        pytest.skip("masking.apply_masks not available yet")
    model = _mlp7()
    masks = {n: torch.rand(p.shape, generator=_gen(13)) < 0.3 for n, p in model.named_parameters() if p.dim() > 1}
    explicit = copy.deepcopy(model)
    masking.apply_masks(model, masks)
    approximate_isometry(model, steps=100, progress=False)
    approximate_isometry(explicit, masks=masks, steps=100, progress=False)
    for name, p in model.named_parameters():
        assert torch.equal(p, explicit.get_parameter(name)), name


def test_bad_arguments_leave_the_model_untouched():
    model = _mlp7()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = {"1.weight": torch.ones(100, 100, dtype=torch.bool)}
    cases = [
        (dict(solver="adam"), ValueError, "`solver` must be one of"),
        (dict(target="eye"), ValueError, "`target` must be one of"),
        (dict(steps=-1), ValueError, "`steps`"),
        (dict(steps=1.5), TypeError, "`steps`"),
        (dict(lr=0.0), ValueError, "`lr`"),
        (dict(gain=-1.0), ValueError, "`gain`"),
        (dict(tol=-0.1), ValueError, "`tol`"),
        (dict(masks={"1.weight": torch.ones(100, 100)}), TypeError, "torch.bool"),
        (dict(masks={"1.weight": torch.ones(10, 10, dtype=torch.bool)}), ValueError, "shape"),
        (dict(masks={**good, "nope.weight": torch.ones(1, dtype=torch.bool)}), ValueError, "nope.weight"),
        (dict(include="0.bias"), ValueError, "at least 2 dimensions"),
        (dict(include="missing.*"), ValueError, "matches no parameter"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            approximate_isometry(model, progress=False, **kwargs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
