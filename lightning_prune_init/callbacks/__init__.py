"""Lightning callbacks: thin orchestration around the functional core."""

from lightning_prune_init.callbacks.prune_at_init import IsometryRepair, PruneAtInitCallback, notify_prune_stage

__all__ = ["IsometryRepair", "PruneAtInitCallback", "notify_prune_stage"]
