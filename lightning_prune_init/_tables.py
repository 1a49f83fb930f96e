"""Plain-text tables: every report of the package is rendered by :func:`format_table`.

The first column is left-aligned, the others right-aligned; a rule separates the header from the rows.

>>> print(format_table(["layer", "kept"], [["fc1", "1,000"], ["fc2", "20"]]))
layer   kept
-----  -----
fc1    1,000
fc2       20
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, rule: bool = True, title: str = "") -> str:
    """Render ``rows`` (strings) under ``headers`` as aligned columns, optionally under a ``title`` line."""
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        cells = list(cells) + [""] * (len(widths) - len(cells))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [title] if title else []
    lines.append(line(headers))
    if rule:
        lines.append(line(["-" * w for w in widths]))
    lines.extend(line(r) for r in rows)
    return "\n".join(lines)
