"""Intervals for the write-up: the mean of a few seeds and the paired difference of two methods, each with a
95% Student-t interval.

With ``n`` seeds, values ``v_1..v_n``: mean ``m``, sample std ``s`` and the interval
``m ± t_{0.975, n-1} · s / sqrt(n)`` (``t_{0.975, 4} = 2.776`` for 5 seeds). A difference between two methods
is taken **per seed** (the seed fixes the scoring batch, the data order and, for one init, the weights), so
its interval is that of the ``n`` paired differences. An interval that excludes 0 is what the write-up
calls a difference that "holds"; one that straddles 0 is "within seed noise".

>>> d = paired_difference([3.0, 4.0, 5.0, 4.0, 4.0], [2.0, 2.5, 3.0, 2.5, 3.0])
>>> round(d.mean, 2), round(d.low, 2), round(d.high, 2), d.verdict
(1.4, 0.88, 1.92, 'higher')
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as _student_t

__all__ = ["Interval", "mean_interval", "paired_difference"]


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its 95% interval ``[low, high]`` and the number of seeds ``n``."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        """``"higher"`` (interval above 0), ``"lower"`` (below 0) or ``"overlaps 0"``."""
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "overlaps 0"

    def format(self, digits: int = 2, signed: bool = True) -> str:
        """``"+1.40 [+0.88, +1.92]"``: the mean and the interval (with signs, for a difference, by default)."""
        sign = "+" if signed else ""
        return f"{self.mean:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with its Student-t interval (a single value gives a zero-width interval).

    >>> mean_interval([1.0, 2.0, 3.0]).format()
    '+2.00 [-0.48, +4.48]'
    """
    vals = [float(v) for v in values]
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return Interval(m, m, m, len(vals))
    half = float(_student_t.ppf(0.5 + confidence / 2, len(vals) - 1)) * statistics.stdev(vals) / math.sqrt(len(vals))
    return Interval(m, m - half, m + half, len(vals))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """``a - b`` per seed (both in seed order, same length), its mean and Student-t interval.

    >>> paired_difference([1.0, 2.0], [1.0, 2.0]).format()
    '+0.00 [+0.00, +0.00]'
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs one value per seed on both sides, got {len(a)} and {len(b)}")
    return mean_interval([float(x) - float(y) for x, y in zip(a, b)], confidence)
