"""Lightning callbacks: thin orchestration around the functional core."""

from lightning_prune_init.callbacks.prune_at_init import PruneAtInitCallback, notify_prune_stage

__all__ = ["PruneAtInitCallback", "notify_prune_stage"]
