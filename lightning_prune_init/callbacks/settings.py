"""The settings groups of :class:`~lightning_prune_init.PruneAtInitCallback`: typed dataclasses LightningCLI parses.

Each group is one question about the run. In YAML a group is a mapping of its fields; where a group has one
obvious value, a short form is accepted too:

================  ====================  =====================================  ================================
argument          group                 YAML                                   short form
================  ====================  =====================================  ================================
``parameters``    :class:`Targets`      ``{include: [...], exclude: [...]}``   a glob or a list of globs = include
``scoring``       :class:`Scoring`      ``{num_batches: 4, loss_fn: a.b.f}``
``masking``       :class:`MaskRule`     ``{scope: layerwise, min_density: 0.01}``
``init``          :class:`Init`         ``{scheme: orthogonal, gain: 1.0}``    the scheme: ``init: orthogonal``
``isometry``      :class:`IsometryRepair`  ``{solver: cg, tol: 1.0e-3}``       ``isometry: true``
``policies``      :class:`Policies`     ``{on_layer_collapse: error}``
================  ====================  =====================================  ================================

The groups hold plain values only (user code by import path), so a configuration prints with ``--print_config``
and is stored in checkpoints that load with ``torch.load(weights_only=True)``. Every value is checked by the
callback's constructor (:meth:`PruneAtInitCallback._validate_settings`), before anything happens.

>>> Init("delta-orthogonal", gain=2.0)
Init(scheme='delta-orthogonal', gain=2.0, seed=None, zero_biases=False)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Optional

__all__ = [
    "INIT_SCHEMES",
    "Init",
    "IsometryRepair",
    "MaskRule",
    "Policies",
    "Scoring",
    "Targets",
    "as_plain",
    "field_names",
]

Supervision = Literal["labels", "label_free", "data_free"]
InitScheme = Literal["orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he"]
Policy = Literal["warn", "error", "ignore"]

#: Accepted values of ``init`` / ``Init.scheme``.
INIT_SCHEMES: tuple[str, ...] = ("orthogonal", "delta-orthogonal", "vs-lecun", "vs-glorot", "vs-he")


@dataclass
class Targets:
    """What is pruned: the rule :func:`~lightning_prune_init.select_parameters` resolves once, on the module.

    Attributes:
        include: glob pattern(s) on parameter names (as ``pl_module.named_parameters()`` yields them, any name of a
            tied tensor). Default ``None``: the weight of every Linear, Conv1d/2d/3d, transformers ``Conv1D`` and
            ``MultiheadAttention`` input projection.
        exclude: glob pattern(s) removed from the selection, e.g. ``["model.classifier.*"]``.
        prune_biases: also prune the biases of those layers (the official SNIP/SPP code does). Default False.
    """

    include: Optional[list[str]] = None
    exclude: Optional[list[str]] = None
    prune_biases: bool = False


@dataclass
class Scoring:
    """How the batches and the loss for scoring are made (the criterion and the supervision are arguments of
    the callback itself).

    Attributes:
        num_batches: scoring batches per process; signed sensitivities are summed over them (and over processes)
            before the absolute value. Default 1.
        loss_fn: import path of ``loss_fn(model, batch) -> scalar``, replacing the default loss (supervision
            ``"labels"`` only). The model passed is the LightningModule.
        logits_fn: import path of ``logits_fn(model, batch) -> logits [..., classes]``, from which the uniform-target
            loss of ``"label_free"`` / ``"data_free"`` scoring is built (token models, modules returning dicts).
        options: options of the criterion, e.g. ``{rounds: 100}`` for synflow (docs/criteria.md lists them).
        seed: seed of the ``random`` criterion. Default 0.
        noise: ``"normal"`` (default) or ``"uniform"``: the noise of ``data_free`` inputs.
        noise_seed: seed of the data-free inputs' generator. Default 0.
        noise_batch_size: batch size of the noise inputs; default that of the real batch (or of
            ``example_input_array``).
    """

    num_batches: int = 1
    loss_fn: Optional[str] = None
    logits_fn: Optional[str] = None
    options: Optional[dict[str, Any]] = None
    seed: int = 0
    noise: Literal["normal", "uniform"] = "normal"
    noise_seed: int = 0
    noise_batch_size: Optional[int] = None


@dataclass
class MaskRule:
    """How scores become masks.

    Attributes:
        scope: ``"global"`` (default; one threshold over all tensors, as SNIP) or ``"layerwise"``.
        min_density: every tensor keeps at least this fraction of its entries; the total stays exact. Default 0.
        pattern: ``"n:m"`` (e.g. ``"2:4"``): keep the top n of every m consecutive weights along the input
            dimension; the sparsity is then ``1 − n/m``. Default ``None`` (unstructured).
        ablation: a sanity check of Frankle et al. (2021) applied to the chosen masks: ``"shuffle"`` (each mask
            permuted within its tensor), ``"random"`` (random masks with the same per-tensor counts), ``"reinit"``
            (kept weights drawn again, with the ``init`` scheme or PyTorch's default), ``"invert"`` (keep the lowest
            scores). Default ``None``.
        ablation_seed: seed of the ablations (the same on every rank). Default 0.
    """

    scope: Literal["global", "layerwise"] = "global"
    min_density: float = 0.0
    pattern: Optional[str] = None
    ablation: Optional[Literal["shuffle", "random", "reinit", "invert"]] = None
    ablation_seed: int = 0


@dataclass
class Init:
    """Re-initialization of the selected weights before scoring, for layerwise dynamical isometry.

    Attributes:
        scheme: ``"orthogonal"`` (block-orthogonal for convs), ``"delta-orthogonal"``, ``"vs-lecun"``,
            ``"vs-glorot"`` or ``"vs-he"`` (docs/method.md).
        gain: scale: singular values of orthogonal weights; the standard deviation's factor for variance scaling.
        seed: seed of a dedicated generator; ``None`` draws from the global RNG as ``torch.nn.init`` does. Rank 0's
            weights are broadcast under DDP either way.
        zero_biases: also set the biases of the selected layers to zero, as the papers do. Default False: nothing
            outside the selection changes.
    """

    scheme: InitScheme = "orthogonal"
    gain: float = 1.0
    seed: Optional[int] = None
    zero_biases: bool = False


@dataclass
class IsometryRepair:
    """The data-free approximate isometry repair after pruning (:func:`~lightning_prune_init.approximate_isometry`).

    ``solver="cg"`` (the default) reaches the authors' objective in seconds; ``solver="sgd"`` with the defaults is
    the authors' exact setting (plain SGD, lr 0.1, 10,000 steps, target ``I``). ``target="reachable"`` lets layers
    with ``fan_in < c_out`` reach 0; ``tol`` stops a layer within ``tol`` of its best possible error.
    """

    steps: int = 10_000
    lr: float = 0.1
    solver: Literal["sgd", "cg"] = "cg"
    target: Literal["identity", "reachable"] = "identity"
    gain: float = 1.0
    tol: Optional[float] = None


@dataclass
class Policies:
    """What to do in the situations that need a decision.

    Attributes:
        on_layer_collapse: a tensor left with no weight: ``"warn"`` (default), ``"error"`` or ``"ignore"``.
        on_dead_units: an output unit left with no input weight (it outputs a constant): ``"ignore"`` (default; the
            count is still logged as ``prune/dead_units/<parameter>``), ``"warn"`` or ``"error"``.
        on_missing_state: resuming from a checkpoint that holds no state of this callback (e.g. saved with
            ``save_weights_only=True``): ``"from_weights"`` (default; the masks are the non-zero pattern of the
            restored weights, checked against the keep count) or ``"error"``.
        enforce_every_step: also force the masks before every training forward, for code that writes weights
            through ``.data`` during training (such writes do not move PyTorch's version counter, so the cheap
            change check cannot see them). Costs one pass over the masked weights per step (3-7% of a step in
            docs/benchmarks.md). Default False: validation, test, checkpoints and the final weights are exact either
            way, and weight-averaging callbacks are handled.
        save_density_profile: write the per-tensor density as ``prune_density-<id>.json``/``.csv`` into the run's
            log folder (or its checkpoint folder without a logger) on rank 0. Default True.
    """

    on_layer_collapse: Policy = "warn"
    on_dead_units: Policy = "ignore"
    on_missing_state: Literal["from_weights", "error"] = "from_weights"
    enforce_every_step: bool = False
    save_density_profile: bool = True


def as_plain(settings: Any) -> Any:
    """A settings group (or ``None``) as a plain dict of its fields, for configs and checkpoints."""
    return None if settings is None else asdict(settings)


def field_names(group: type) -> tuple[str, ...]:
    """The field names of a settings dataclass."""
    return tuple(f.name for f in fields(group))

