"""The callback's checkpoint state: what :class:`~lightning_prune_init.PruneAtInitCallback` saves, and how a restore
is verified before the masks are used again.

Saved (plain Python values and CPU tensors only, so ``torch.load(weights_only=True)`` reads it): the masks,
bit-packed with a checksum and the kept count of each (:func:`~lightning_prune_init.masks.pack_masks`), the
settings that made them (user code by import path), the names of the selected tensors with their aliases, the
density report and profile, the repair report, the sparse-execution decisions and the package version.

Verified on resume (:func:`verify_restore`), before anything is attached; each failure names the tensor, the
checkpoint and the way out, and nothing is repaired silently:

1. the state's format is known and every packed mask decodes (length, padding, checksum, kept count);
2. the checkpoint's rule, resolved on this module, selects exactly the tensors that have masks, with their shapes;
3. every kept count matches the saved report;
4. the restored weights are exactly zero wherever a mask prunes.

A checkpoint with no state of the callback (saved with ``save_weights_only=True``, or without the callback) is
never pruned again silently: :func:`masks_from_weights` rebuilds the masks from the exact zeros of the restored
weights after checking their count against the keep count, or refuses (``policies.on_missing_state="error"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune_init.masks import masked_nonzeros, pack_masks, unpack_masks
from lightning_prune_init.parameters import ParameterSelection, select_parameters
from lightning_prune_init.selection import keep_count

__all__ = [
    "STATE_FORMAT",
    "CheckpointStateError",
    "RestoredState",
    "build_state",
    "expected_kept",
    "masks_from_weights",
    "read_state",
    "verify_restore",
]

#: Version of the callback's state layout (1: the first release, still read).
STATE_FORMAT = 2
_WAY_OUT = (
    "Resume from an intact checkpoint of this run, or start a fresh run (fit without `ckpt_path`) to prune again."
)


class CheckpointStateError(RuntimeError):
    """The callback's state in a checkpoint does not match the module being resumed; nothing was attached."""


@dataclass
class RestoredState:
    """A checkpoint state read back (not yet verified against a module)."""

    packed: Mapping[str, Any]
    config: dict[str, Any]
    report: dict[str, Any]
    extra: dict[str, Any]

    @property
    def rule(self) -> dict[str, Any]:
        """The parameter rule that selected the masked tensors (``include``, ``exclude``, ``prune_biases``)."""
        targets = self.config.get("parameters") or {}
        return {k: targets.get(k) for k in ("include", "exclude")} | {"prune_biases": bool(targets.get("prune_biases"))}


def build_state(masks: Mapping[str, Tensor], config: dict[str, Any], report: dict[str, Any], **extra: Any) -> dict:
    """The plain state dict saved in checkpoints (see the module docstring)."""
    from lightning_prune_init import __version__

    return {
        "format": STATE_FORMAT,
        "version": __version__,
        "masks": pack_masks(masks),
        "config": config,
        "report": report,
        **extra,
    }


def _config_from_v1(config: dict[str, Any]) -> dict[str, Any]:
    """The first release kept ``include``/``exclude``/``prune_biases`` at the top of its config."""
    out = dict(config)
    out["parameters"] = {k: config.get(k) for k in ("include", "exclude", "prune_biases")}
    return out


def read_state(state: Any, source: str | None) -> RestoredState:
    """Check the layout of a saved state (a mapping of a known format with its keys); masks are decoded later, by
    :func:`verify_restore`.

    Raises:
        CheckpointStateError: not a mapping, an unknown format, a missing or malformed key (the message names
            ``source``).
    """

    def refuse(what: str) -> CheckpointStateError:
        return CheckpointStateError(f"PruneAtInitCallback: the checkpoint {source!r} holds {what}. {_WAY_OUT}")

    if not isinstance(state, Mapping):
        raise refuse(f"a state of type {type(state).__name__} instead of a mapping")
    fmt = state.get("format")
    if fmt not in (1, STATE_FORMAT):
        raise refuse(f"a state of unknown format {fmt!r} (this version reads formats 1 and {STATE_FORMAT})")
    missing = [k for k in ("masks", "config") if k not in state]
    if missing:
        raise refuse(f"an incomplete state (missing {missing})")
    if not isinstance(state["config"], Mapping) or not isinstance(state["masks"], Mapping):
        raise refuse("a state whose `config` or `masks` is not a mapping")
    report = state.get("report") or {}
    if not isinstance(report, Mapping):
        raise refuse("a state whose `report` is not a mapping")
    config = dict(state["config"]) if fmt == STATE_FORMAT else _config_from_v1(dict(state["config"]))
    extra = {k: v for k, v in state.items() if k not in ("format", "masks", "config", "report")}
    return RestoredState(state["masks"], config, dict(report), extra)


def expected_kept(config: Mapping[str, Any], masks: Mapping[str, Tensor]) -> int | None:
    """The total number of kept entries the saved settings give for masks of these shapes (``None``: unknown)."""
    from lightning_prune_init.selection import keep_count, min_keep_count, parse_pattern

    masking = config.get("masking") or {}
    sparsity = config.get("sparsity")
    scope = masking.get("scope", config.get("scope", "global"))
    min_density = masking.get("min_density", config.get("min_density", 0.0)) or 0.0
    pattern = masking.get("pattern")
    numels = [m.numel() for m in masks.values()]
    if pattern:
        n, m = parse_pattern(pattern)
        return sum(k // m * n for k in numels)
    if not isinstance(sparsity, (int, float)):
        return None
    if scope == "layerwise":
        return sum(max(keep_count(k, sparsity), min_keep_count(k, min_density)) for k in numels)
    return keep_count(sum(numels), sparsity)


def verify_restore(module: nn.Module, restored: RestoredState, source: str | None) -> dict[str, Tensor]:
    """Decode and verify restored masks against ``module`` (its weights already restored); returns the masks.

    Raises:
        CheckpointStateError: any of the checks of the module docstring fails; nothing is attached.
    """

    def refuse(what: str) -> CheckpointStateError:
        return CheckpointStateError(f"PruneAtInitCallback: cannot resume from {source!r}: {what}. {_WAY_OUT}")

    try:
        masks = unpack_masks(restored.packed, source=source)
    except ValueError as err:
        raise refuse(str(err)) from err
    try:
        selection = select_parameters(module, **restored.rule)
    except (ValueError, TypeError) as err:
        raise refuse(f"its parameter rule {restored.rule} does not apply to this module ({err})") from err
    missing = [n for n in selection if n not in masks]
    unexpected = [n for n in masks if n not in selection]
    if missing:
        raise refuse(f"no mask for {', '.join(missing)}, which the checkpoint's rule selects (that layer would train dense)")
    if unexpected:
        raise refuse(f"masks for {', '.join(unexpected)}, which the checkpoint's rule does not select on this module")
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(selection[name].shape):
            raise refuse(f"the mask of {name} has shape {tuple(mask.shape)}, the parameter {tuple(selection[name].shape)}")
    saved_layers = (restored.report or {}).get("layers") or {}
    for name, mask in masks.items():
        saved = saved_layers.get(name, {}).get("kept")
        kept = int(torch.count_nonzero(mask))
        if saved is not None and int(saved) != kept:
            raise refuse(f"the mask of {name} keeps {kept:,} entries, the checkpoint's report says {int(saved):,}")
    total = sum(int(torch.count_nonzero(m)) for m in masks.values())
    expected = expected_kept(restored.config, masks)
    if expected is not None and total != expected:
        raise refuse(
            f"its masks keep {total:,} entries in all, but its settings (sparsity {restored.config.get('sparsity')}) "
            f"keep {expected:,}"
        )
    sparse = restored.extra.get("sparse_execution")
    if sparse is not None:
        layers = sparse.get("layers") if isinstance(sparse, Mapping) else None
        if not isinstance(layers, Mapping) or any(name not in masks for name in layers):
            unknown = [n for n in layers if n not in masks] if isinstance(layers, Mapping) else layers
            raise refuse(f"its sparse-execution report names layers without a mask: {unknown}")
    nonzero = {n: c for n, c in masked_nonzeros(module, masks).items() if c}
    if nonzero:
        listed = ", ".join(f"{n} ({c:,})" for n, c in nonzero.items())
        raise refuse(f"the restored weights are not zero where the masks prune: {listed}")
    return masks


def masks_from_weights(
    selection: ParameterSelection, sparsity: float, scope: str, source: str | None, policy: str
) -> dict[str, Tensor]:
    """Masks from the non-zero pattern of the restored weights of ``selection``, when their count is the keep count.

    Raises:
        CheckpointStateError: ``policy == "error"``, or the non-zero counts do not match ``sparsity`` and ``scope``.
    """
    from lightning.pytorch.utilities import rank_zero_warn

    message = (
        f"resuming from {source!r}, which holds no PruneAtInitCallback state (was it saved with "
        "`save_weights_only=True`, or without this callback?)."
    )
    if policy == "error":
        raise CheckpointStateError(
            f"PruneAtInitCallback: {message} Refusing to prune again. Resume from a full checkpoint, or set "
            "policies.on_missing_state='from_weights' to rebuild the masks from the zeros of the restored weights."
        )
    masks = {n: p.detach() != 0 for n, p in selection.items()}
    if scope == "global":
        expected = {"all selected": keep_count(sum(m.numel() for m in masks.values()), sparsity)}
        found = {"all selected": sum(int(m.sum()) for m in masks.values())}
    else:
        expected = {n: keep_count(m.numel(), sparsity) for n, m in masks.items()}
        found = {n: int(m.sum()) for n, m in masks.items()}
    if found != expected:
        raise CheckpointStateError(
            f"PruneAtInitCallback: {message} The non-zero weights ({found}) do not match the keep count of "
            f"sparsity={sparsity} ({expected}), so the masks cannot be rebuilt from the weights. Resume from a full "
            "checkpoint (with callback state)."
        )
    rank_zero_warn(f"PruneAtInitCallback: {message} Masks rebuilt from the zeros of the restored weights.")
    return masks
