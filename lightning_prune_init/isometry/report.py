"""What the isometry repair did: per weight the error before and after, the lowest possible, steps and time.

>>> layer = LayerIsometry("fc.weight", (4, 8), "linear", 1, 4, 8, 0.5, 2.0, 0.1, 0.0, 30, 0.01)
>>> report = IsometryReport({"fc.weight": layer}, solver="cg", time_s=0.01)
>>> report.error_after, report.unreachable()
(0.1, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_prune_init._tables import format_table

__all__ = ["IsometryReport", "LayerIsometry"]


@dataclass(frozen=True)
class LayerIsometry:
    """The repair of one weight. Errors are :func:`~lightning_prune_init.isometry.orthogonality_error` of the
    weight's matrices under the report's target and gain.

    Attributes:
        name: parameter name, as ``model.named_parameters()`` yields it.
        shape: the parameter's shape.
        kind: its :class:`~lightning_prune_init.layouts.MatrixLayout` kind (``"linear"``, ``"conv"``,
            ``"transposed"``, ``"blocks"``, ``"matrix"``).
        groups, rows, cols: the weight is read as ``groups`` matrices ``[rows, cols]`` (a grouped conv: one per
            group, ``[c_out/g, c_in/g·k·k]``; attention ``in_proj_weight``: 3 blocks ``[E, E]``).
        density: kept fraction of the mask (1.0 when dense).
        error_before, error_after: error of ``C ⊙ W`` before and after the repair.
        best_possible: the lowest error any weight with this mask can have
            (:func:`~lightning_prune_init.isometry.best_possible_error`); > 0: the target is unreachable.
        steps: solver steps (the most any of its matrices took; fewer than requested when it met ``tol`` or,
            for ``"cg"``, converged).
        time_s: wall time of the batch of same-size matrices this weight was solved in, seconds (shared by the
            weights of that batch).

    >>> LayerIsometry("w", (3, 2), "linear", 1, 3, 2, 1.0, 1.5, 1.0, 1.0, 10, 0.0).reachable
    False
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    groups: int
    rows: int
    cols: int
    density: float
    error_before: float
    error_after: float
    best_possible: float
    steps: int
    time_s: float

    @property
    def reachable(self) -> bool:
        """Whether the mask allows an error of 0."""
        return self.best_possible == 0.0

    @property
    def matrices(self) -> str:
        """``"[rows, cols]"``, prefixed by ``"G x "`` when the weight has several matrices."""
        return ("" if self.groups == 1 else f"{self.groups} x ") + f"[{self.rows}, {self.cols}]"


@dataclass(frozen=True)
class IsometryReport:
    """What :func:`~lightning_prune_init.isometry.approximate_isometry` did, per weight and in total (the totals
    are sums of the per-weight errors, SPP's objective).

    Attributes:
        layers: ``{parameter name: LayerIsometry}`` of the repaired weights.
        solver, target, gain, steps, lr, tol: the arguments of the repair (``steps``: the cap per weight).
        time_s: wall time of the whole repair, seconds.
        notes: the selected tensors the repair left out and why (fewer than 2 dimensions, not floating point,
            empty), and masks of tensors outside the selection, one sentence each.

    >>> print(IsometryReport(notes=("bias: skipped",)))
    approximate isometry: solver=cg, target=identity, gain=1, 0.00 s
    parameter  kind  matrices  density  before   after    best  steps
    ---------  ----  --------  -------  ------  ------  ------  -----
    total                               0.0000  0.0000  0.0000
    note: bias: skipped
    """

    layers: dict[str, LayerIsometry] = field(default_factory=dict)
    solver: str = "cg"
    target: str = "identity"
    gain: float = 1.0
    steps: int = 0
    lr: float = 0.0
    tol: float | None = None
    time_s: float = 0.0
    notes: tuple[str, ...] = ()

    def _total(self, attribute: str) -> float:
        return sum(getattr(x, attribute) for x in self.layers.values())

    @property
    def error_before(self) -> float:
        """Σ of the weights' errors before the repair."""
        return self._total("error_before")

    @property
    def error_after(self) -> float:
        """Σ of the weights' errors after the repair (SPP's objective)."""
        return self._total("error_after")

    @property
    def best_possible(self) -> float:
        """Σ of the weights' lowest possible errors."""
        return self._total("best_possible")

    def unreachable(self) -> list[str]:
        """Names of the weights whose mask does not allow an error of 0."""
        return [name for name, x in self.layers.items() if not x.reachable]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML friendly)."""
        keys = ("kind", "groups", "rows", "cols", "density", "error_before", "error_after", "best_possible",
                "steps", "time_s")
        return {
            "solver": self.solver,
            "target": self.target,
            "gain": self.gain,
            "steps": self.steps,
            "lr": self.lr,
            "tol": self.tol,
            "time_s": self.time_s,
            "error_before": self.error_before,
            "error_after": self.error_after,
            "best_possible": self.best_possible,
            "notes": list(self.notes),
            "layers": {
                name: {"shape": list(x.shape), **{k: getattr(x, k) for k in keys}} for name, x in self.layers.items()
            },
        }

    def metrics(self, prefix: str = "isometry") -> dict[str, float]:
        """Flat scalars for a logger: ``<prefix>/error_before``, ``<prefix>/error_after``, ``<prefix>/best_possible``,
        ``<prefix>/time_s`` and per parameter ``<prefix>/error_before/<name>``, ``<prefix>/error_after/<name>``,
        ``<prefix>/best_possible/<name>``, ``<prefix>/steps/<name>``."""
        out = {
            f"{prefix}/error_before": self.error_before,
            f"{prefix}/error_after": self.error_after,
            f"{prefix}/best_possible": self.best_possible,
            f"{prefix}/time_s": self.time_s,
        }
        for name, x in self.layers.items():
            out[f"{prefix}/error_before/{name}"] = x.error_before
            out[f"{prefix}/error_after/{name}"] = x.error_after
            out[f"{prefix}/best_possible/{name}"] = x.best_possible
            out[f"{prefix}/steps/{name}"] = float(x.steps)
        return out

    def __str__(self) -> str:
        rows = [
            [name, x.kind, x.matrices, f"{x.density:.2%}", f"{x.error_before:.4f}", f"{x.error_after:.4f}",
             f"{x.best_possible:.4f}" + ("" if x.reachable else "*"), str(x.steps)]
            for name, x in self.layers.items()
        ]
        rows.append(["total", "", "", "", f"{self.error_before:.4f}", f"{self.error_after:.4f}",
                     f"{self.best_possible:.4f}"])
        title = f"approximate isometry: solver={self.solver}, target={self.target}, gain={self.gain:g}, {self.time_s:.2f} s"
        lines = [format_table(["parameter", "kind", "matrices", "density", "before", "after", "best", "steps"], rows,
                              title=title)]
        if self.unreachable():
            lines.append("* target unreachable with this mask: 'best' is the lowest error possible")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
