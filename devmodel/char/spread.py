"""Spreads over disjoint seed blocks: every measure of devmodel/char/ is a mean over blocks with its sample sd.

A block is a run of consecutive new-image seeds; gaps are paired (a condition minus plain at the same seeds and
prompts), so the seed-to-seed variety of plain images cancels out of them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one quantity over ``n`` disjoint blocks."""

    mean: float
    sd: float
    n: int

    @property
    def low(self) -> float:
        """mean - 3 sd: the floor a test of one block may assume for a quantity that should be positive."""
        return self.mean - 3 * self.sd

    @property
    def se(self) -> float:
        """Standard error of the mean over the blocks."""
        return self.sd / math.sqrt(self.n) if self.n else math.nan

    def cell(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}f} ± {self.sd:.{digits}f}"


def spread(values: list[float]) -> Spread:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return Spread(math.nan, math.nan, 0)
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return Spread(statistics.fmean(values), sd, len(values))


def blocks_of(seeds: list[int], size: int) -> list[list[int]]:
    """``seeds`` cut into consecutive blocks of ``size`` (a shorter tail is dropped)."""
    return [seeds[i:i + size] for i in range(0, len(seeds) - size + 1, size)]
