"""Scoring for pruning at initialization: criteria behind one small interface, the loss contract, noise batches.

Where to look:

* ``registry.py``: :data:`CRITERIA`, :func:`register_criterion`, :func:`get_criterion`,
  :func:`check_criterion_options`: which criteria exist and which options they take;
* ``context.py``: :class:`ScoringContext`, what a criterion ``fn(model, batches, parameters, context)`` is told;
* ``losses.py``: :func:`make_loss`, the loss contract (labels / label-free / data-free, ``loss_fn`` /
  ``logits_fn``);
* ``noise.py``: :func:`noise_batches` for data-free scoring (tensors, tuples, dict batches with token ids);
* ``guards.py``: when scoring can run (inference mode, meta device, frozen tensors), the dry run
  :func:`check_scoring_input`, second derivatives;
* ``snip.py`` (:func:`connection_sensitivity`), ``grasp.py``, ``synflow.py``, ``iterative.py``, ``simple.py``
  (magnitude, random): the criteria; ``rounds.py``: pruning in rounds;
* ``api.py``: :func:`criterion_masks`, score then select.

See docs/criteria.md.

>>> tuple(CRITERIA)
('snip', 'magnitude', 'random', 'synflow', 'grasp', 'iterative_snip')
"""

# the criteria register themselves on import, in this order (the order of CRITERIA): snip, magnitude, random,
# synflow, grasp, iterative_snip
from lightning_prune_init.scoring.snip import connection_sensitivity, snip  # isort: skip
from lightning_prune_init.scoring.simple import magnitude, random_scores  # isort: skip
from lightning_prune_init.scoring.synflow import synflow  # isort: skip
from lightning_prune_init.scoring.grasp import grasp  # isort: skip
from lightning_prune_init.scoring.iterative import iterative_snip  # isort: skip

from lightning_prune_init._imports import resolve_callable
from lightning_prune_init.scoring.api import criterion_masks, run_criterion
from lightning_prune_init.scoring.context import ScoringContext
from lightning_prune_init.scoring.guards import check_can_score, check_scoring_input
from lightning_prune_init.scoring.losses import LossFn, ScoringInputError, ScoringLoss, Supervision, make_loss
from lightning_prune_init.scoring.noise import input_embedding, noise_batches, vocab_size_of
from lightning_prune_init.scoring.registry import (
    CRITERIA,
    Criterion,
    check_criterion_options,
    criterion_needs_data,
    get_criterion,
    register_criterion,
)
from lightning_prune_init.scoring.rounds import exponential_schedule

__all__ = [
    "CRITERIA",
    "Criterion",
    "LossFn",
    "ScoringContext",
    "ScoringInputError",
    "ScoringLoss",
    "Supervision",
    "check_can_score",
    "check_criterion_options",
    "check_scoring_input",
    "connection_sensitivity",
    "criterion_masks",
    "criterion_needs_data",
    "exponential_schedule",
    "get_criterion",
    "grasp",
    "input_embedding",
    "iterative_snip",
    "magnitude",
    "make_loss",
    "noise_batches",
    "random_scores",
    "register_criterion",
    "resolve_callable",
    "run_criterion",
    "snip",
    "synflow",
    "vocab_size_of",
]
