"""Saved model evaluations and the map from a Use's sigma to them (nearest, or two with weights in log-sigma)."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One saved model evaluation: a sigma and its occurrence at that sigma."""

    index: int
    sigma: float
    occurrence: int


class SigmaMap:
    """Maps the sigma of a Use evaluation to saved evaluations: the nearest (``lookup``) or the two around it with
    interpolation weights (``blend``).

    Distances are measured in log-sigma, the scale on which samplers space their steps. Sigmas outside the
    saved range clamp to the nearest end. The n-th evaluation at one sigma maps to the n-th saved one,
    or to the last saved one when the reference has fewer.
    """

    def __init__(self, slots: list[Slot]):
        if not slots:
            raise ValueError("a reference needs at least one saved evaluation")
        by_sigma: dict[float, list[Slot]] = defaultdict(list)
        for slot in slots:
            by_sigma[slot.sigma].append(slot)
        self._sigmas = sorted(by_sigma)
        self._logs = [math.log(max(s, 1e-12)) for s in self._sigmas]
        self._by_sigma = {s: sorted(v, key=lambda x: x.occurrence) for s, v in by_sigma.items()}

    def nearest_sigma(self, sigma: float) -> float:
        x = math.log(max(sigma, 1e-12))
        i = bisect.bisect_left(self._logs, x)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(self._logs)]
        best = min(candidates, key=lambda j: abs(self._logs[j] - x))
        return self._sigmas[best]

    def lookup(self, sigma: float, occurrence: int = 0) -> Slot:
        return self._occurrence(self.nearest_sigma(sigma), occurrence)

    def blend(self, sigma: float, occurrence: int = 0) -> list[tuple[Slot, float]]:
        """The saved evaluations to use at ``sigma`` with their weights, interpolating linearly in log-sigma
        between the two saved sigmas around it (a saved sigma itself, or one outside the range, gets weight 1).

        Features change smoothly along the schedule, so interpolating keeps references with few saved sigmas
        (compact profiles) and Use with another schedule much closer to the real features than the nearest.
        """
        x = math.log(max(sigma, 1e-12))
        i = bisect.bisect_left(self._logs, x)
        if i == len(self._logs) or self._logs[i] == x or i == 0:
            return [(self.lookup(sigma, occurrence), 1.0)]
        low, high = self._sigmas[i - 1], self._sigmas[i]
        weight = (x - self._logs[i - 1]) / (self._logs[i] - self._logs[i - 1])
        return [(self._occurrence(low, occurrence), 1.0 - weight), (self._occurrence(high, occurrence), weight)]

    def _occurrence(self, sigma: float, occurrence: int) -> Slot:
        slots = self._by_sigma[sigma]
        return slots[min(occurrence, len(slots) - 1)]

    def following(self, slot: Slot) -> Slot | None:
        """The slot a sampler evaluates next, descending in sigma: what to prefetch."""
        slots = self._by_sigma[slot.sigma]
        if slot.occurrence + 1 < len(slots):
            return slots[slot.occurrence + 1]
        i = self._sigmas.index(slot.sigma)
        return self._by_sigma[self._sigmas[i - 1]][0] if i > 0 else None
