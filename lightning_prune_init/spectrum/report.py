"""How spectra are reported: scalar tags, the per-layer figure and the text table of a run's stages.

Results are ``{scope: {layer or END_TO_END: SpectrumStats}}`` and densities ``{layer: kept fraction}`` for one
stage (``after_init``, ``after_pruning``, ``after_repair``, ``fit_start``, ``train``). Tags (stable, see
docs/monitoring.md): ``jsv/<stage>/<scope>/<layer>/<stat>``, ``jsv/<stage>/end_to_end/<stat>`` and
``density/<stage>/<layer>``; statistics that are not finite are left out.

>>> import torch
>>> from lightning_prune_init.spectrum.stats import stats_from_values
>>> stats = stats_from_values(torch.tensor([[2.0, 1.0]]), (2, 2))
>>> metrics("fit_start", {"end_to_end": {"end_to_end": stats}}, {"net.0": 0.5})["jsv/fit_start/end_to_end/max"]
2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_prune_init._tables import format_table
from lightning_prune_init.spectrum.api import END_TO_END
from lightning_prune_init.spectrum.stats import SpectrumStats

__all__ = ["Results", "figure", "metrics", "summary_table", "tag"]

#: ``{scope: {layer or END_TO_END: SpectrumStats}}``.
Results = Mapping[str, Mapping[str, SpectrumStats]]


def tag(stage: str, scope: str, layer: str) -> str:
    """The tag prefix of one result: ``jsv/<stage>/<scope>/<layer>`` (``jsv/<stage>/end_to_end`` end to end).

    >>> tag("train", "layerwise", "net.0"), tag("train", "end_to_end", "end_to_end")
    ('jsv/train/layerwise/net.0', 'jsv/train/end_to_end')
    """
    return f"jsv/{stage}/{scope}" if layer == END_TO_END else f"jsv/{stage}/{scope}/{layer}"


def metrics(stage: str, results: Results, density: Mapping[str, float]) -> dict[str, float]:
    """The scalar metrics of one stage under their documented tags."""
    out: dict[str, float] = {}
    for scope, per_layer in results.items():
        for layer, stats in per_layer.items():
            for stat, value in stats.scalars().items():
                out[f"{tag(stage, scope, layer)}/{stat}"] = value
    for layer, value in density.items():
        out[f"density/{stage}/{layer}"] = value
    return out


def summary_table(stage_results: Mapping[str, Results], scopes: Sequence[str]) -> str:
    """Singular-value statistics (``mean ± std [min, max]``) per layer (rows) and stage (columns).

    Rows: every layer of the ``layerwise`` scope (else ``weights``), then the end-to-end Jacobian. Empty when no
    stage was logged.

    >>> import torch
    >>> from lightning_prune_init.spectrum.stats import stats_from_values
    >>> one = {"end_to_end": {"end_to_end": stats_from_values(torch.tensor([[1.0, 1.0]]), (2, 2))}}
    >>> print(summary_table({"fit_start": one}, ["end_to_end"]))
    Jacobian singular values: mean ± std [min, max]
                                   fit_start
    end to end  1.000 ± 0.000 [1.000, 1.000]
    """
    if not stage_results:
        return ""
    stages = list(stage_results)
    scope = "layerwise" if "layerwise" in scopes else "weights" if "weights" in scopes else None
    names: list[str] = []
    for results in stage_results.values():
        for name in results.get(scope, {}) if scope else {}:
            if name not in names:
                names.append(name)

    def cell(stats: SpectrumStats | None) -> str:
        return f"{stats.mean:.3f} ± {stats.std:.3f} [{stats.min:.3f}, {stats.max:.3f}]" if stats is not None else ""

    rows = [[f"{scope}: {n}", *(cell(stage_results[s].get(scope, {}).get(n)) for s in stages)] for n in names]
    if "end_to_end" in scopes:
        rows.append(["end to end", *(cell(stage_results[s].get("end_to_end", {}).get(END_TO_END)) for s in stages)])
    title = "Jacobian singular values: mean ± std [min, max]"
    return format_table(["", *stages], rows, rule=False, title=title)


def figure(stage: str, results: Results, density: Mapping[str, float]) -> Any:
    """A matplotlib ``Figure``: per-layer density (top) and the spread of singular values, min–max and mean
    (bottom; ``layerwise`` results, else ``weights``)."""
    from matplotlib.figure import Figure

    spread_scope = next((s for s in ("layerwise", "weights") if results.get(s)), None)
    layers = list(density)
    fig = Figure(figsize=(max(4.0, 0.6 * len(layers) + 2), 5.0))
    ax_density, ax_sv = fig.subplots(2, 1, sharex=True)
    positions = list(range(len(layers)))
    ax_density.bar(positions, [density[k] for k in layers], color="tab:gray")
    ax_density.set_ylabel("density")
    ax_density.set_ylim(0, 1.05)
    ax_density.set_title(f"{stage}: per-layer density and singular values")
    if spread_scope is not None:
        per_layer = results[spread_scope]
        for i, k in enumerate(layers):
            stats = per_layer.get(k)
            if stats is None:
                continue
            if math.isfinite(stats.min):
                ax_sv.vlines(i, stats.min, stats.max, color="tab:blue")
            ax_sv.plot([i], [stats.max], "v", color="tab:blue")
            if math.isfinite(stats.mean):
                ax_sv.plot([i], [stats.mean], "o", color="tab:orange")
        ax_sv.axhline(1.0, color="black", linewidth=0.5, linestyle="--")
        ax_sv.set_ylabel(f"{spread_scope} σ (min–max, mean)")
    ax_sv.set_xticks(positions)
    ax_sv.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
    fig.tight_layout()
    return fig
