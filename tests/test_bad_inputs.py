"""Issue 12, point 7: a table of bad inputs to the callback and the functional API.

Every row is one call with one wrong input. A row expects either a refusal (an exception of a given type whose
message contains given fragments: the argument's name and what is accepted) or correct handling (no error, and a
check of the result). For every refusal the module must be exactly as it was: a bit-identical ``state_dict``, the
same module types, ``requires_grad`` flags and training mode, no masks attached (``get_masks(model) == {}``) and no
hooks left (the hook counts are unchanged, and a value written at any position survives a forward and
``state_dict()``).

:func:`outcome` sorts a row into one of the issue's five classes: ``refused`` (clearly, before any change),
``handled`` (correctly, no error needed), ``unclear`` (another exception type, or a message without the fragments),
``after-change`` (refused, but the module changed or kept a mask or hook) and ``silent`` (no error where one is
needed). The test asserts ``refused`` or ``handled`` for every row; ``python -m tests.test_bad_inputs`` prints the
table with the counts.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_prune_init import (
    PruneAtInitCallback,
    apply_masks,
    approximate_isometry,
    connection_sensitivity,
    disable_sparse_execution,
    enable_sparse_execution,
    get_criterion,
    get_masks,
    init_model_,
    jacobian_singular_values,
    orthogonality_error,
    register_criterion,
    remove_masks,
    select_masks,
    select_parameters,
    sparsity_report,
)
from lightning_prune_init.scoring import noise_batches

from tests.helpers import Classifier, trainer_kwargs

NAN, INF = float("nan"), float("inf")
SHAPE = (1, 4, 4)


# --- models ---------------------------------------------------------------------------------------------------------
def tiny() -> Classifier:
    """16-12-10 MLP on 1x4x4 inputs: ``net.1.weight`` [12, 16], ``net.3.weight`` [10, 12] (and their biases)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10))
    return Classifier(net=net, shape=SHAPE, n=32, batch_size=8)


class DictOutput(Classifier):
    """Returns a dict (no logits): the default scoring loss cannot read it."""

    def forward(self, x):
        return {"features": self.net(x)}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x)["features"], y)


class DictBatches(Classifier):
    def train_dataloader(self):
        return [{"image": x, "label": y} for x, y in super().train_dataloader()]


class NoData(Classifier):
    """No train dataloader and no ``example_input_array`` (data-free scoring has no shape to copy)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.example_input_array = None

    def train_dataloader(self):
        return []


def _variant(cls: type) -> Callable[[], Classifier]:
    def build() -> Classifier:
        torch.manual_seed(0)
        return cls(net=nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10)), shape=SHAPE,
                   n=32, batch_size=8)

    return build


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class OnceDifferentiable(Classifier):
    """A custom autograd Function with a once-differentiable backward: GraSP's Hessian product cannot run."""

    def forward(self, x):
        return self.net[3](_Square.apply(self.net[1](self.net[0](x))))


def frozen_first_layer() -> Classifier:
    model = tiny()
    model.net[1].weight.requires_grad_(False)
    return model


def inf_weight() -> Classifier:
    model = tiny()
    with torch.no_grad():
        model.net[1].weight[0, 0] = INF
    return model


def on_meta() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10))


def _batch(model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, *SHAPE, generator=g), torch.randint(0, 10, (8,), generator=g)


def _masks(model: nn.Module, **override: Any) -> dict[str, Any]:
    """Valid masks for the selected weights (every other entry kept), with ``override`` replacing entries."""
    masks: dict[str, Any] = {}
    for name, p in select_parameters(model).items():
        masks[name] = (torch.arange(p.numel()) % 2 == 0).view(p.shape)
    masks.update(override)
    return masks


# --- running one row --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad input: ``call(model, folder)`` and what must happen."""

    id: str
    call: Callable[[nn.Module, str], Any]
    error: type[BaseException] | None  # None: handled correctly, no error needed
    fragments: tuple[str, ...] = ()  # all must be in the message: the argument and what is accepted
    model: Callable[[], nn.Module] = tiny
    check: Callable[[nn.Module, Any], None] | None = None  # for handled rows: the result is right
    unchanged: bool = False  # for handled rows: a no-op, the module must stay exactly as it was
    marks: tuple = field(default_factory=tuple)


def fit(model: nn.Module, folder: str, ckpt_path: str | None = None, max_steps: int = 1, **callback: Any):
    """A fit with ``PruneAtInitCallback(**callback)`` (the constructor runs here, inside the row's call)."""
    callback.setdefault("verbose", False)
    callback.setdefault("sparsity", 0.9)
    cb = PruneAtInitCallback(**callback)
    trainer = pl.Trainer(**trainer_kwargs(folder, max_steps=max_steps), callbacks=[cb])
    trainer.fit(model, ckpt_path=ckpt_path)
    return cb


def cb(**callback: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: fit(model, folder, **callback)


def _hooks(model: nn.Module) -> int:
    count = 0
    for m in model.modules():
        for attr in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
                     "_load_state_dict_post_hooks"):
            count += len(getattr(m, attr, None) or {})
    for p in model.parameters(recurse=True):
        count += len(p._backward_hooks or {}) + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return count


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _fingerprint(model: nn.Module) -> dict[str, Any]:
    if any(t.is_meta for t in model.state_dict().values()):
        state = {k: (tuple(v.shape), v.dtype, "meta") for k, v in model.state_dict().items()}
    else:
        state = {k: (tuple(v.shape), v.dtype, _bits(v)) for k, v in model.state_dict().items()}
    return {
        "state_dict": state,
        "modules": [(n, type(m).__name__, m.training) for n, m in model.named_modules()],
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": _hooks(model),
    }


def _written_values_survive(model: nn.Module) -> bool:
    """No hook is left: a value written at the first entry of every parameter survives a forward and state_dict."""
    if any(p.is_meta for p in model.parameters()):
        return True
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.view(-1)[0] = 0.125
        example = getattr(model, "example_input_array", None)
        model(example if example is not None else torch.zeros(2, *SHAPE))
    state = model.state_dict()
    return all(n in state and float(p.detach().view(-1)[0]) == 0.125 and float(state[n].view(-1)[0]) == 0.125
               for n, p in params.items())


def _changes(model: nn.Module, before: dict[str, Any]) -> list[str]:
    after = _fingerprint(model)
    changed = [k for k in before if before[k] != after[k]]
    if get_masks(model):
        changed.append(f"masks {sorted(get_masks(model))}")
    if not _written_values_survive(model):
        changed.append("a hook rewrites written values")
    return changed


def outcome(case: Case, folder: str) -> tuple[str, str]:
    """``(class, detail)`` of one row; the classes are those of the module docstring."""
    model = case.model()
    before = _fingerprint(model)
    try:
        result = case.call(model, folder)
        error = None
    except Exception as err:  # noqa: BLE001 - sorted below
        error = err
    message = "" if error is None else f"{type(error).__name__}: {error}"
    if case.error is None:
        if error is not None:
            return "unclear", f"raised although the input is fine: {message}"
        if case.check is not None:
            try:
                case.check(model, result)
            except AssertionError as err:
                return "silent", f"no error, wrong result: {err}"
        changed = _changes(model, before) if case.unchanged else []
        if changed:
            return "silent", f"no error, but a no-op changed the module: {changed}"
        return "handled", "no error, module unchanged" if case.unchanged else "no error, result checked"
    if error is None:
        return "silent", "no error"
    changed = _changes(model, before)
    missing = [f for f in case.fragments if f not in str(error)]
    if not isinstance(error, case.error) or missing:
        also = f"; and changed: {changed}" if changed else ""
        return "unclear", f"{message} (expected {case.error.__name__} with {missing or case.fragments}){also}"
    if changed:
        return "after-change", f"{message}; changed: {changed}"
    return "refused", message


# --- the table: the callback's settings (refused in the constructor) ---------------------------------------------
SETTINGS: list[Case] = [
    # sparsity
    Case("sparsity=1.0", cb(sparsity=1.0), ValueError, ("`sparsity`", "[0, 1)")),
    Case("sparsity=-0.1", cb(sparsity=-0.1), ValueError, ("`sparsity`", "[0, 1)")),
    Case("sparsity=nan", cb(sparsity=NAN), ValueError, ("`sparsity`", "finite number")),
    Case("sparsity='0.9'", cb(sparsity="0.9"), TypeError, ("`sparsity`", "number")),
    Case("sparsity=True", cb(sparsity=True), TypeError, ("`sparsity`", "number")),
    # criterion, supervision
    Case("criterion='snipp'", cb(criterion="snipp"), ValueError, ("`criterion`", "snip")),
    Case("criterion=5", cb(criterion=5), TypeError, ("`criterion`", "name or import path")),
    Case("criterion=lambda", cb(criterion=lambda *a: None), ValueError, ("`criterion`", "import path")),
    Case("criterion='os.no_such_fn'", cb(criterion="os.no_such_fn"), ValueError, ("`criterion`", "os.no_such_fn")),
    Case("supervision='none'", cb(supervision="none"), ValueError, ("`supervision`", "'labels', 'label_free'")),
    # parameters
    Case("parameters=5", cb(parameters=5), TypeError, ("`parameters`", "Targets")),
    Case("parameters={'include': 5}", cb(parameters={"include": 5}), TypeError, ("`parameters.include`", "glob")),
    Case("parameters={'exclude': ['']}", cb(parameters={"exclude": [""]}), TypeError, ("`parameters.exclude`", "glob")),
    Case("parameters={'prune_biases': 'yes'}", cb(parameters={"prune_biases": "yes"}), TypeError,
         ("`parameters.prune_biases`", "true or false")),
    Case("parameters={'bogus': 1}", cb(parameters={"bogus": 1}), TypeError, ("`parameters`", "bogus", "include")),
    # scoring
    Case("scoring=5", cb(scoring=5), TypeError, ("`scoring`", "Scoring")),
    Case("scoring={'num_batches': 0}", cb(scoring={"num_batches": 0}), ValueError, ("`scoring.num_batches`", ">= 1")),
    Case("scoring={'num_batches': 1.5}", cb(scoring={"num_batches": 1.5}), TypeError, ("`scoring.num_batches`", "integer")),
    Case("scoring={'seed': 'abc'}", cb(scoring={"seed": "abc"}), TypeError, ("`scoring.seed`", "integer")),
    Case("scoring={'noise': 'gauss'}", cb(scoring={"noise": "gauss"}), ValueError, ("`scoring.noise`", "'normal', 'uniform'")),
    Case("scoring={'noise_seed': None}", cb(scoring={"noise_seed": None}), TypeError, ("`scoring.noise_seed`", "integer")),
    Case("scoring={'noise_batch_size': 0}", cb(scoring={"noise_batch_size": 0}), ValueError,
         ("`scoring.noise_batch_size`", ">= 1")),
    Case("scoring={'loss_fn': 'no.such.fn'}", cb(scoring={"loss_fn": "no.such.fn"}), ValueError,
         ("`scoring.loss_fn`", "no.such.fn")),
    Case("scoring={'loss_fn': lambda}", cb(scoring={"loss_fn": lambda m, b: 0.0}), ValueError,
         ("`scoring.loss_fn`", "import path")),
    Case("scoring={'logits_fn': 3}", cb(scoring={"logits_fn": 3}), TypeError, ("`scoring.logits_fn`", "import path")),
    Case("scoring={'options': 5}", cb(scoring={"options": 5}), TypeError, ("`scoring.options`", "mapping")),
    Case("scoring={'options': {'rounds': 3}} with snip", cb(scoring={"options": {"rounds": 3}}), ValueError,
         ("rounds", "snip", "takes no option")),
    Case("scoring={'options': {'rounds': 0}} with synflow", cb(criterion="synflow", scoring={"options": {"rounds": 0}}),
         ValueError, ("rounds", ">= 1")),
    Case("scoring={'bogus': 1}", cb(scoring={"bogus": 1}), TypeError, ("`scoring`", "bogus", "num_batches")),
    Case("loss_fn with supervision='label_free'",
         cb(supervision="label_free", scoring={"loss_fn": "tests.helpers.dict_batch_loss"}), ValueError,
         ("`loss_fn`", "label_free")),
    # masking
    Case("masking={'scope': 'local'}", cb(masking={"scope": "local"}), ValueError, ("`masking.scope`", "'global', 'layerwise'")),
    Case("masking={'min_density': 1.5}", cb(masking={"min_density": 1.5}), ValueError, ("`masking.min_density`", "[0, 1]")),
    Case("masking={'min_density': 'a'}", cb(masking={"min_density": "a"}), TypeError, ("`masking.min_density`", "number")),
    Case("masking={'pattern': '2-4'}", cb(sparsity=None, masking={"pattern": "2-4"}), ValueError, ("pattern", "'n:m'")),
    Case("masking={'pattern': '5:4'}", cb(sparsity=None, masking={"pattern": "5:4"}), ValueError, ("pattern", "5:4")),
    Case("masking={'pattern': '2:4'} with sparsity=0.9", cb(masking={"pattern": "2:4"}), ValueError,
         ("`sparsity`", "`masking.pattern`", "0.5")),
    Case("masking={'pattern': '2:4', 'min_density': 0.1}", cb(sparsity=None, masking={"pattern": "2:4", "min_density": 0.1}),
         ValueError, ("`masking.pattern`", "`masking.min_density`")),
    Case("masking={'ablation': 'flip'}", cb(masking={"ablation": "flip"}), ValueError, ("`masking.ablation`", "'shuffle'")),
    Case("masking={'ablation_seed': 1.5}", cb(masking={"ablation_seed": 1.5}), TypeError, ("`masking.ablation_seed`", "integer")),
    # init
    Case("init='bogus'", cb(init="bogus"), ValueError, ("`init.scheme`", "'orthogonal'")),
    Case("init=5", cb(init=5), TypeError, ("`init`", "Init")),
    Case("init={'gain': 0}", cb(init={"gain": 0}), ValueError, ("`init.gain`", "> 0")),
    Case("init={'gain': -1.0}", cb(init={"gain": -1.0}), ValueError, ("`init.gain`", "> 0")),
    Case("init={'seed': 'x'}", cb(init={"seed": "x"}), TypeError, ("`init.seed`", "integer")),
    Case("init={'zero_biases': 1}", cb(init={"zero_biases": 1}), TypeError, ("`init.zero_biases`", "true or false")),
    Case("init={'bogus': 1}", cb(init={"bogus": 1}), TypeError, ("`init`", "bogus", "scheme")),
    # isometry
    Case("isometry={'solver': 'cgg'}", cb(isometry={"solver": "cgg"}), ValueError, ("`isometry.solver`", "'sgd', 'cg'")),
    Case("isometry={'steps': -5}", cb(isometry={"steps": -5}), ValueError, ("`isometry.steps`", ">= 0")),
    Case("isometry={'steps': 2.5}", cb(isometry={"steps": 2.5}), TypeError, ("`isometry.steps`", "integer")),
    Case("isometry={'lr': nan}", cb(isometry={"lr": NAN}), ValueError, ("`isometry.lr`", "finite number > 0")),
    Case("isometry={'lr': 0}", cb(isometry={"lr": 0}), ValueError, ("`isometry.lr`", "> 0")),
    Case("isometry={'target': 'zero'}", cb(isometry={"target": "zero"}), ValueError, ("`isometry.target`", "'identity'")),
    Case("isometry={'gain': inf}", cb(isometry={"gain": INF}), ValueError, ("`isometry.gain`", "finite")),
    Case("isometry={'tol': -1}", cb(isometry={"tol": -1.0}), ValueError, ("`isometry.tol`", ">= 0")),
    Case("isometry='yes'", cb(isometry="yes"), TypeError, ("`isometry`", "IsometryRepair")),
    Case("isometry={'bogus': 1}", cb(isometry={"bogus": 1}), TypeError, ("`isometry`", "bogus", "solver")),
    # sparse execution, policies, verbose
    Case("sparse_execution='maybe'", cb(sparse_execution="maybe"), ValueError, ("`sparse_execution`", "'off', 'auto', 'on'")),
    Case("sparse_execution=True", cb(sparse_execution=True), ValueError, ("`sparse_execution`", "'off'")),
    Case("policies='strict'", cb(policies="strict"), TypeError, ("`policies`", "Policies")),
    Case("policies={'on_layer_collapse': 'raise'}", cb(policies={"on_layer_collapse": "raise"}), ValueError,
         ("`policies.on_layer_collapse`", "'warn', 'error', 'ignore'")),
    Case("policies={'on_dead_units': None}", cb(policies={"on_dead_units": None}), ValueError,
         ("`policies.on_dead_units`", "'warn'")),
    Case("policies={'on_missing_state': 'rescore'}", cb(policies={"on_missing_state": "rescore"}), ValueError,
         ("`policies.on_missing_state`", "'from_weights', 'error'")),
    Case("policies={'enforce_every_step': 'yes'}", cb(policies={"enforce_every_step": "yes"}), TypeError,
         ("`policies.enforce_every_step`", "true or false")),
    Case("policies={'save_density_profile': 1}", cb(policies={"save_density_profile": 1}), TypeError,
         ("`policies.save_density_profile`", "true or false")),
    Case("policies={'bogus': 1}", cb(policies={"bogus": 1}), TypeError, ("`policies`", "bogus", "on_layer_collapse")),
    Case("verbose='yes'", cb(verbose="yes"), TypeError, ("`verbose`", "true or false")),
]


# --- the callback at fit time: what needs the module, checked before anything changes ------------------------------
def _equal(value: Any, expected: Any) -> None:
    assert value == expected, value


def _kept(expected: int) -> Callable[[nn.Module, Any], None]:
    def check(model: nn.Module, callback: Any) -> None:
        masks = get_masks(model)
        assert masks and sum(int(m.sum()) for m in masks.values()) == expected, {n: int(m.sum()) for n, m in masks.items()}
        state = model.state_dict()  # dense values, also under sparse execution
        assert all(torch.count_nonzero(state[n][~m]) == 0 for n, m in masks.items())

    return check


FIT_TIME: list[Case] = [
    Case("fit: parameters='encoder.*' (matches nothing)", cb(parameters="encoder.*", init="orthogonal"), ValueError,
         ("`include`", "encoder.*", "net.1.weight")),
    Case("fit: parameters={'exclude': ['*']}", cb(parameters={"exclude": ["*"]}), ValueError, ("no prunable parameters",)),
    Case("fit: masking.min_density above the keep count", cb(masking={"min_density": 0.5}, init="orthogonal"),
         ValueError, ("`masking.min_density`", "lower")),
    Case("fit: masking.pattern 4:8 on 12 inputs", cb(sparsity=None, masking={"pattern": "4:8"}, init="orthogonal"),
         ValueError, ("`masking.pattern`", "multiple of 8", "net.3.weight")),
    Case("fit: a model returning a dict", cb(init="orthogonal"), Exception, ("logits_fn",), model=_variant(DictOutput)),
    Case("fit: dict batches without loss_fn", cb(init="orthogonal"), ValueError, ("loss_fn",), model=_variant(DictBatches)),
    Case("fit: data_free with an empty train dataloader", cb(supervision="data_free", init="orthogonal"),
         ValueError, ("train dataloader", "no batch"), model=_variant(NoData)),
    Case("fit: a non-finite weight", cb(init=None), ValueError, ("scores would not be finite",), model=inf_weight),
    Case("fit: on_layer_collapse='error' after init", cb(sparsity=0.999, init="orthogonal",
                                                           policies={"on_layer_collapse": "error"},
                                                           parameters={"exclude": ["net.1.*"]}),
         ValueError, ("pruned entirely", "net.3.weight", "Lower `sparsity`"), model=Classifier),
    Case("fit: grasp on a model without second derivatives, after init", cb(criterion="grasp", init="orthogonal"),
         RuntimeError, ("'grasp'", "second derivatives", "'snip'"), model=_variant(OnceDifferentiable)),
    Case("fit: label_free on a model returning a dict", cb(supervision="label_free", init="orthogonal"), ValueError,
         ("logits_fn",), model=_variant(DictOutput)),
    Case("fit: on_dead_units='error'", cb(sparsity=0.95, policies={"on_dead_units": "error"}, init="orthogonal"),
         ValueError, ("output unit(s) would keep no input weight", "net.1.weight", "Lower `sparsity`")),
    Case("fit: only a bias selected, with init (zeroed, so every score is 0)", cb(parameters=["net.1.bias"], init="orthogonal"),
         ValueError, ("scores are zero", "check the selection")),
    Case("fit: sparse_execution='on' with init and repair", cb(sparse_execution="on", init="orthogonal",
                                                               isometry={"steps": 5}),
         None, check=_kept(round((12 * 16 + 10 * 12) * 0.1))),
    Case("fit: a frozen layer named in include", cb(parameters="net.1.weight", init="orthogonal"), None,
         model=frozen_first_layer, check=_kept(round(12 * 16 * 0.1))),
    Case("fit: a frozen layer left to the default rule", cb(sparsity=0.5), None,
         model=frozen_first_layer, check=_kept(round(10 * 12 * 0.5))),
    Case("fit: parameters as a tuple of globs", cb(parameters=("net.1.weight", "net.3.weight"), sparsity=0.5), None,
         check=_kept(round((12 * 16 + 10 * 12) * 0.5))),
    Case("fit: sparsity=0 (integer)", cb(sparsity=0), None, check=_kept(12 * 16 + 10 * 12)),
    Case("fit: scoring.num_batches above the batches in an epoch", cb(scoring={"num_batches": 9}, sparsity=0.5), None,
         check=_kept(round((12 * 16 + 10 * 12) * 0.5))),
]


# --- the functional API ----------------------------------------------------------------------------------------------
def _scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) for n, p in select_parameters(model).items()}


def sel(**kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: select_parameters(model, **kwargs)


def sm(**kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: select_masks(_scores(model), **kwargs)


def am(masks: Callable[[nn.Module], Any], **kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: apply_masks(model, masks(model), **kwargs)


def cs(batches: Any = None, **kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: connection_sensitivity(model, [_batch()] if batches is None else batches, **kwargs)


def im(*args: Any, **kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: init_model_(model, *args, **kwargs)


def ai(**kwargs: Any) -> Callable[[nn.Module, str], Any]:
    kwargs.setdefault("progress", False)
    return lambda model, folder: approximate_isometry(model, **kwargs)


def js(inputs: Any = "batch", **kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: jacobian_singular_values(model, _batch()[0] if inputs == "batch" else inputs, **kwargs)


def es(mode: Any = "on", **kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: enable_sparse_execution(model, mode, **kwargs)


def nb(like: Any = "batch", *args: Any, **kwargs: Any) -> Callable[[nn.Module, str], Any]:
    return lambda model, folder: noise_batches(_batch() if like == "batch" else like, *args, **kwargs)


def _in_inference_mode(model: nn.Module, folder: str) -> Any:
    with torch.inference_mode():
        return connection_sensitivity(model, [_batch()])


def _apply_frozen(model: nn.Module) -> dict:
    return {n: (torch.arange(p.numel()) % 2 == 0).view(p.shape) for n, p in model.named_parameters() if p.dim() == 2}


def _frozen_weight_masked(model: nn.Module, result: Any) -> None:
    masks = get_masks(model)
    assert set(masks) == {"net.1.weight", "net.3.weight"}
    assert all(torch.count_nonzero(model.get_parameter(n).detach()[~m]) == 0 for n, m in masks.items())


FUNCTIONAL: list[Case] = [
    # select_parameters
    Case("select_parameters(include=5)", sel(include=5), TypeError, ("`include`", "glob")),
    Case("select_parameters(include='encoder.*')", sel(include="encoder.*"), ValueError, ("`include`", "encoder.*", "net.1.weight")),
    Case("select_parameters(exclude=3)", sel(exclude=3), TypeError, ("`exclude`", "glob")),
    Case("select_parameters(prune_biases='yes')", sel(prune_biases="yes"), TypeError, ("`prune_biases`", "bool")),
    Case("select_parameters(model=5)", lambda model, folder: select_parameters(5), TypeError, ("`model`", "torch.nn.Module")),
    # select_masks
    Case("select_masks(sparsity=1.5)", sm(sparsity=1.5), ValueError, ("`sparsity`", "[0, 1)")),
    Case("select_masks(sparsity='0.9')", sm(sparsity="0.9"), TypeError, ("`sparsity`", "number")),
    Case("select_masks(scope='local')", sm(sparsity=0.5, scope="local"), ValueError, ("`scope`", "'global', 'layerwise'")),
    Case("select_masks(min_density=2)", sm(sparsity=0.5, min_density=2), ValueError, ("`min_density`", "[0, 1]")),
    Case("select_masks(on_layer_collapse='boom')", sm(sparsity=0.5, on_layer_collapse="boom"), ValueError,
         ("`on_layer_collapse`", "'warn'")),
    Case("select_masks(pattern='2:5:1')", sm(pattern="2:5:1"), ValueError, ("pattern", "'n:m'")),
    Case("select_masks(scores={})", lambda model, folder: select_masks({}, 0.5), ValueError, ("`scores`", "non-empty")),
    Case("select_masks(scores with a list)", lambda model, folder: select_masks({"w": [1.0, 2.0]}, 0.5), TypeError,
         ("score 'w'", "tensor")),
    Case("select_masks(negative scores)", lambda model, folder: select_masks({"w": -torch.ones(4)}, 0.5), ValueError,
         ("score 'w'", ">= 0")),
    Case("select_masks(no sparsity, no pattern)", sm(), TypeError, ("`sparsity`", "`pattern`")),
    # apply_masks
    Case("apply_masks(float mask)", am(lambda m: _masks(m, **{"net.3.weight": torch.ones(10, 12)})), TypeError,
         ("'net.3.weight'", "torch.bool")),
    Case("apply_masks(wrong shape)", am(lambda m: _masks(m, **{"net.3.weight": torch.ones(12, 10, dtype=torch.bool)})),
         ValueError, ("'net.3.weight'", "(12, 10)", "(10, 12)")),
    Case("apply_masks(unknown name)", am(lambda m: _masks(m, **{"net.3.weights": torch.ones(10, 12, dtype=torch.bool)})),
         ValueError, ("'net.3.weights'", "named_parameters", "net.3.weight")),
    Case("apply_masks(not a mapping)", am(lambda m: [torch.ones(3, dtype=torch.bool)]), TypeError, ("`masks`", "mapping")),
    Case("apply_masks({})", am(lambda m: {}), ValueError, ("`masks`", "empty")),
    Case("apply_masks(optimizers=5)", am(_masks, optimizers=5), TypeError, ("`optimizers`", "optimizer")),
    Case("apply_masks(frozen weight)", am(_apply_frozen), None, model=frozen_first_layer, check=_frozen_weight_masked),
    # connection_sensitivity
    Case("connection_sensitivity(batches=5)", cs(batches=5), TypeError, ("`batches`", "iterable")),
    Case("connection_sensitivity(batches=[])", cs(batches=[]), ValueError, ("`batches`", "empty")),
    Case("connection_sensitivity(labels='bogus')", cs(labels="bogus"), ValueError, ("`labels`", "'true', 'uniform'")),
    Case("connection_sensitivity(parameters=5)", cs(parameters=5), TypeError, ("`parameters`",)),
    Case("connection_sensitivity(loss_fn='no.such')", cs(loss_fn="no.such"), ValueError, ("`loss_fn`", "no.such")),
    Case("connection_sensitivity(normalize='yes')", cs(normalize="yes"), TypeError, ("`normalize`", "true or false")),
    Case("connection_sensitivity under inference_mode", _in_inference_mode, RuntimeError,
         ("inference_mode", "outside")),
    Case("connection_sensitivity(meta model)", cs(), ValueError, ("meta device", "to_empty"), model=on_meta),
    Case("connection_sensitivity(batch without labels)", cs(batches=[torch.randn(8, *SHAPE)]), ValueError,
         ("labels", "loss_fn")),
    Case("connection_sensitivity(labels out of range)", cs(batches=[(torch.randn(8, *SHAPE), torch.full((8,), 12))]),
         Exception, ("12",)),
    # init_model_
    Case("init_model_(scheme='bogus')", im("bogus"), ValueError, ("`scheme`", "'orthogonal'")),
    Case("init_model_(gain=-1)", im("orthogonal", -1.0), ValueError, ("`gain`", "> 0")),
    Case("init_model_(gain=nan)", im("orthogonal", NAN), ValueError, ("`gain`", "finite")),
    Case("init_model_(gamma=0)", im("delta-orthogonal", gamma=0.0), ValueError, ("`gamma`", "> 0")),
    Case("init_model_(parameters='encoder.*')", im(parameters="encoder.*"), ValueError, ("`include`", "encoder.*")),
    Case("init_model_(zero_biases='yes')", im(zero_biases="yes"), TypeError, ("`zero_biases`", "true or false")),
    Case("init_model_(generator=5)", im(generator=5), TypeError, ("`generator`", "torch.Generator")),
    Case("init_model_(model=5)", lambda model, folder: init_model_(5), TypeError, ("`model`", "torch.nn.Module")),
    # approximate_isometry
    Case("approximate_isometry(solver='cgg')", ai(solver="cgg"), ValueError, ("`solver`", "'sgd'", "'cg'")),
    Case("approximate_isometry(steps=-5)", ai(steps=-5), ValueError, ("`steps`", ">= 0")),
    Case("approximate_isometry(lr=nan)", ai(lr=NAN), ValueError, ("`lr`", "finite number > 0")),
    Case("approximate_isometry(target='zero')", ai(target="zero"), ValueError, ("`target`", "'identity'")),
    Case("approximate_isometry(tol=-1)", ai(tol=-1.0), ValueError, ("`tol`", ">= 0")),
    Case("approximate_isometry(gain=0)", ai(gain=0.0), ValueError, ("`gain`", "> 0")),
    Case("approximate_isometry(masks of wrong shape)",
         lambda model, folder: approximate_isometry(model, masks={"net.1.weight": torch.ones(3, 3, dtype=torch.bool)},
                                                    progress=False),
         ValueError, ("'net.1.weight'", "(3, 3)")),
    Case("approximate_isometry(progress='yes')", ai(progress="yes"), TypeError, ("`progress`", "true or false")),
    Case("approximate_isometry(masks=5)", ai(masks=5), TypeError, ("`masks`", "mapping")),
    Case("approximate_isometry(parameters=5)", ai(parameters=5), TypeError, ("`parameters`", "ParameterSelection")),
    Case("approximate_isometry(float mask)", ai(masks={"net.1.weight": torch.ones(12, 16)}), TypeError,
         ("'net.1.weight'", "torch.bool")),
    # jacobian_singular_values
    Case("jacobian_singular_values(scope='bogus')", js(scope="bogus"), ValueError, ("`scope`", "'layerwise'")),
    Case("jacobian_singular_values(method='bogus')", js(method="bogus"), ValueError, ("`method`", "'auto'")),
    Case("jacobian_singular_values(power_iters=0)", js(power_iters=0), ValueError, ("`power_iters`", ">= 1")),
    Case("jacobian_singular_values(num_probes=0)", js(num_probes=0), ValueError, ("`num_probes`", ">= 1")),
    Case("jacobian_singular_values(layers=5)", js(layers=5), TypeError, ("`layers`", "glob")),
    Case("jacobian_singular_values(layers='encoder.*')", js(layers="encoder.*"), ValueError, ("encoder.*",)),
    Case("jacobian_singular_values(seed='abc')", js(seed="abc"), TypeError, ("`seed`", "integer")),
    Case("jacobian_singular_values(forward_fn=5)", js(forward_fn=5), TypeError, ("`forward_fn`", "callable")),
    Case("jacobian_singular_values(parameters=5)", js(parameters=5), TypeError, ("`parameters`", "ParameterSelection")),
    Case("jacobian_singular_values(input_key=5)", js(input_key=5), TypeError, ("`input_key`", "key of the dict batch")),
    Case("jacobian_singular_values(max_exact_dim=-1)", js(max_exact_dim=-1), ValueError, ("`max_exact_dim`", ">= 0")),
    Case("jacobian_singular_values(inputs=None, end_to_end)", js(inputs=None, scope="end_to_end"), TypeError,
         ("`inputs`", "tensor")),
    # enable_sparse_execution
    Case("enable_sparse_execution(mode='bogus')", es("bogus"), ValueError, ("`mode`", "'auto', 'on'")),
    Case("enable_sparse_execution(threshold=-1)", es("auto", threshold=-1.0), ValueError, ("`threshold`", "> 0")),
    Case("enable_sparse_execution(rounds=0)", es("auto", rounds=0), ValueError, ("`rounds`", ">= 1")),
    Case("enable_sparse_execution(workload='bogus')", es("auto", workload="bogus"), ValueError, ("`workload`", "'train'")),
    Case("enable_sparse_execution(no masks)", es("on"), ValueError, ("no masks", "apply_masks")),
    Case("enable_sparse_execution(masks not bool)",
         lambda model, folder: enable_sparse_execution(model, "on", masks={"net.1.weight": torch.ones(12, 16)}),
         TypeError, ("'net.1.weight'", "torch.bool")),
    Case("enable_sparse_execution(decisions=5)", es("on", masks=None, decisions=5), TypeError, ("`decisions`", "mapping")),
    Case("enable_sparse_execution(decisions for an unknown layer)",
         lambda model, folder: enable_sparse_execution(model, "on", masks=_masks(model), decisions={"nope": True}),
         ValueError, ("`decisions`", "unknown ['nope']")),
    Case("enable_sparse_execution(model=5)", lambda model, folder: enable_sparse_execution(5, "on"), TypeError,
         ("`model`", "torch.nn.Module")),
    Case("disable_sparse_execution on a dense model", lambda model, folder: disable_sparse_execution(model), None,
         unchanged=True),
    # masks and reports
    Case("remove_masks(names=['nope'])", lambda model, folder: remove_masks(model, ["nope"]), ValueError,
         ("`names`", "'nope'", "masked names")),
    Case("remove_masks on a model without masks", lambda model, folder: remove_masks(model), None,
         check=lambda model, removed: _equal(removed, {}), unchanged=True),
    Case("sparsity_report(5)", lambda model, folder: sparsity_report(5), TypeError, ("`masks_or_model`", "mapping")),
    Case("orthogonality_error(weight=5)", lambda model, folder: orthogonality_error(5), TypeError,
         ("`weight`", "torch.Tensor")),
    Case("orthogonality_error(mask of another shape)",
         lambda model, folder: orthogonality_error(model.net[1].weight, torch.ones(3, dtype=torch.bool)), ValueError,
         ("(3,)", "(12, 16)")),
    Case("orthogonality_error(target='zz')", lambda model, folder: orthogonality_error(model.net[1].weight, target="zz"),
         ValueError, ("`target`", "'identity', 'reachable'")),
    # the criterion registry
    Case("get_criterion('nope')", lambda model, folder: get_criterion("nope"), ValueError, ("`criterion`", "'snip'")),
    Case("get_criterion(5)", lambda model, folder: get_criterion(5), TypeError, ("`criterion`", "import path")),
    Case("register_criterion('snip') again", lambda model, folder: register_criterion("snip")(lambda *a, **k: None),
         ValueError, ("'snip'", "already registered")),
    Case("register_criterion(5)", lambda model, folder: register_criterion(5), ValueError,
         ("criterion name", "non-empty string")),
    # noise_batches
    Case("noise_batches(num_batches=0)", nb("batch", 0), ValueError, ("`num_batches`", ">= 1")),
    Case("noise_batches(distribution='gauss')", nb(distribution="gauss"), ValueError, ("`distribution`", "'normal', 'uniform'")),
    Case("noise_batches(seed='abc')", nb(seed="abc"), TypeError, ("`seed`", "integer")),
    Case("noise_batches(batch_size=0)", nb(batch_size=0), ValueError, ("`batch_size`", ">= 1")),
    Case("noise_batches(vocab_size=-1)", nb(vocab_size=-1), ValueError, ("`vocab_size`", ">= 1")),
    Case("noise_batches(like=5)", nb(5), TypeError, ("`like`", "tensor")),
]

CASES = SETTINGS + FIT_TIME + FUNCTIONAL


def test_the_table_has_at_least_60_rows_with_unique_ids():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case, tmp_path):
    kind, detail = outcome(case, str(tmp_path))
    expected = "refused" if case.error is not None else "handled"
    assert kind == expected, f"{case.id}: {kind}: {detail}"


if __name__ == "__main__":  # python -m tests.test_bad_inputs: the table and its counts
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        for section, cases in (("callback settings", SETTINGS), ("callback at fit time", FIT_TIME),
                               ("functional API", FUNCTIONAL)):
            counts: Counter = Counter()
            for case in cases:
                kind, detail = outcome(case, folder)
                counts[kind] += 1
                print(f"{kind:12s} | {case.id} | {detail[:300]}")
            print(f"== {section}: {dict(counts)} of {len(cases)}", file=sys.stderr)
