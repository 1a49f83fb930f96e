"""What sparse execution decided, layer by layer: density, decision, measured ratio, time spent deciding.

:class:`SparseExecutionReport` is returned by :func:`~lightning_prune_init.sparse.api.enable_sparse_execution`
and :func:`~lightning_prune_init.sparse.api.disable_sparse_execution`. It converts to and from plain Python
types (:meth:`SparseExecutionReport.to_dict`, :meth:`SparseExecutionReport.from_dict`), so it can live in a
checkpoint loaded with ``torch.load(weights_only=True)``, and a resumed run switches exactly the layers of
:attr:`SparseExecutionReport.decisions`.

>>> report = SparseExecutionReport("on", {"fc.weight": LayerDecision("fc.weight", "Linear", (4, 8), 0.25, True, "on")})
>>> report.decisions, SparseExecutionReport.from_dict(report.to_dict()) == report
({'fc.weight': True}, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lightning_prune_init._tables import format_table

__all__ = ["LayerDecision", "SparseExecutionReport"]


@dataclass(frozen=True)
class LayerDecision:
    """The decision for one weight.

    Attributes:
        name: the parameter name (the mask's key), e.g. ``"net.fc1.weight"``.
        kind: the owning module's class name.
        shape: the weight's shape.
        density: kept / total entries under its mask (``None``: no mask).
        sparse: whether the layer computes sparsely now.
        reason: why, in a few words (``"on"``, ``"measured faster"``, ``"measured slower"``, ``"no mask"``, ...).
        dense_ms, sparse_ms: the measured time of one step of this layer at its real input shape, dense and
            sparse (``"auto"`` only; ``None`` otherwise).
        decide_s: seconds spent measuring this layer.
        kernel: ``"csr"`` or ``"2:4"`` (semi-structured, CUDA inference) when sparse, else ``None``.

    >>> LayerDecision("fc.weight", "Linear", (8, 8), 0.1, True, "measured faster", 2.0, 0.5).ratio
    0.25
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    density: Optional[float]
    sparse: bool
    reason: str
    dense_ms: Optional[float] = None
    sparse_ms: Optional[float] = None
    decide_s: float = 0.0
    kernel: Optional[str] = None

    @property
    def ratio(self) -> Optional[float]:
        """``sparse_ms / dense_ms`` (below 1: sparse is faster), when measured."""
        if self.dense_ms is None or self.sparse_ms is None or self.dense_ms <= 0:
            return None
        return self.sparse_ms / self.dense_ms


@dataclass(frozen=True)
class SparseExecutionReport:
    """Every weight considered, with its decision (see :class:`LayerDecision`).

    Attributes:
        mode: ``"auto"``, ``"on"`` or ``"off"`` (after :func:`~lightning_prune_init.sparse.api.disable_sparse_execution`).
        layers: ``{parameter name: LayerDecision}``.

    >>> report = SparseExecutionReport("on", {"a.weight": LayerDecision("a.weight", "Linear", (2, 2), 0.5, True, "on")})
    >>> report.switched, report.metrics()["sparse/layers_sparse"]
    (['a.weight'], 1.0)
    """

    mode: str
    layers: dict[str, LayerDecision] = field(default_factory=dict)

    @property
    def decisions(self) -> dict[str, bool]:
        """``{parameter name: computes sparsely}`` for every weight listed."""
        return {name: layer.sparse for name, layer in self.layers.items()}

    @property
    def switched(self) -> list[str]:
        """Names of the weights that compute sparsely."""
        return [name for name, layer in self.layers.items() if layer.sparse]

    @property
    def decide_s(self) -> float:
        """Total seconds spent deciding (measuring layers)."""
        return sum(layer.decide_s for layer in self.layers.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (``weights_only`` checkpoints)."""
        return {
            "mode": self.mode,
            "decide_s": self.decide_s,
            "layers": {name: {**asdict(layer), "shape": list(layer.shape)} for name, layer in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SparseExecutionReport:
        """Inverse of :meth:`to_dict`."""
        layers = {
            name: LayerDecision(**{**entry, "shape": tuple(entry["shape"])}) for name, entry in state["layers"].items()
        }
        return cls(state["mode"], layers)

    def metrics(self, prefix: str = "sparse") -> dict[str, float]:
        """Scalars for a logger: ``<prefix>/layers_sparse``, ``<prefix>/decide_s``, ``<prefix>/ratio/<name>``."""
        out = {f"{prefix}/layers_sparse": float(len(self.switched)), f"{prefix}/decide_s": self.decide_s}
        out.update({f"{prefix}/ratio/{n}": x.ratio for n, x in self.layers.items() if x.ratio is not None})
        return out

    def __str__(self) -> str:
        def ms(value: Optional[float]) -> str:
            return "-" if value is None else f"{value:.3f}"

        rows = [
            [
                x.name,
                x.kind,
                "x".join(map(str, x.shape)),
                "-" if x.density is None else f"{x.density:.2%}",
                f"sparse ({x.kernel})" if x.sparse and x.kernel else "sparse" if x.sparse else "dense",
                ms(x.dense_ms),
                ms(x.sparse_ms),
                "-" if x.ratio is None else f"{x.ratio:.2f}",
                x.reason,
            ]
            for x in self.layers.values()
        ]
        headers = ["parameter", "module", "shape", "density", "runs", "dense ms", "sparse ms", "ratio", "why"]
        title = f"sparse execution ({self.mode}): {len(self.switched)} of {len(self.layers)} weights sparse, {self.decide_s:.2f} s deciding"
        return format_table(headers, rows, title=title)
