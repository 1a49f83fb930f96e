"""Lightning callbacks: thin orchestration around the functional core."""

from lightning_prune_init.callbacks.prune_at_init import IsometryRepair, PruneAtInitCallback, notify_prune_stage
from lightning_prune_init.callbacks.signal_propagation import SignalPropagationMonitor

__all__ = ["IsometryRepair", "PruneAtInitCallback", "SignalPropagationMonitor", "notify_prune_stage"]
