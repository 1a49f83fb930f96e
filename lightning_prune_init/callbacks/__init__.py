"""Lightning callbacks: thin orchestration around the functional core, and their settings groups."""

from lightning_prune_init.callbacks.prune_at_init import PruneAtInitCallback
from lightning_prune_init.callbacks.pruning import notify_prune_stage
from lightning_prune_init.callbacks.settings import Init, IsometryRepair, MaskRule, Policies, Scoring, Targets
from lightning_prune_init.callbacks.signal_propagation import SignalPropagationMonitor

__all__ = [
    "Init",
    "IsometryRepair",
    "MaskRule",
    "Policies",
    "PruneAtInitCallback",
    "Scoring",
    "SignalPropagationMonitor",
    "Targets",
    "notify_prune_stage",
]
