"""Addressing of reference features: which layer, which chunk (cond/uncond), which sigma.

The hosts call an attn1 replace patch with ``extra_options`` that name the layer (``block``,
``block_index``), the row layout (``cond_or_uncond``: one entry per chunk, 1 = uncond, 0 = cond) and
the current noise level (``sigmas``, one per latent). Everything here is pure Python so that it can be
tested against the recorded host traces without torch.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass

UNCOND = 1  # value used in cond_or_uncond for the negative prompt


def layer_id(extra_options: dict) -> str:
    """A stable name for one attn1 layer, e.g. ``input4.1`` or ``middle0.0``."""
    block_name, number = extra_options["block"][0], int(extra_options["block"][1])
    return f"{block_name}{number}.{int(extra_options.get('block_index', 0))}"


def split_layer_id(lid: str) -> tuple[str, int, int]:
    """``"output3.0"`` -> ``("output", 3, 0)``."""
    head, index = lid.split(".")
    name = head.rstrip("0123456789")
    return name, int(head[len(name):]), int(index)


_BLOCK_PREFIX = {"input": "IN", "middle": "M", "output": "OUT"}


def block_label(lid: str) -> str:
    """The block name users know from block-weight tools: ``IN04``, ``M00``, ``OUT03``."""
    name, number, _ = split_layer_id(lid)
    return f"{_BLOCK_PREFIX[name]}{number:02d}"


def block_group(lid: str) -> str:
    return split_layer_id(lid)[0]


def chunk_names(cond_or_uncond) -> list[str]:
    """One name per chunk: ``uncond0``, ``cond0``, ``cond1`` ... in row order.

    AND-prompts give several cond chunks; the ordinal keeps them apart.
    """
    seen: dict[str, int] = defaultdict(int)
    names = []
    for flag in cond_or_uncond:
        kind = "uncond" if int(flag) == UNCOND else "cond"
        names.append(f"{kind}{seen[kind]}")
        seen[kind] += 1
    return names


def rows_per_chunk(total_rows: int, cond_or_uncond) -> int:
    chunks = len(cond_or_uncond)
    if chunks == 0 or total_rows % chunks:
        raise ValueError(f"{total_rows} rows cannot be split into {chunks} cond/uncond chunks")
    return total_rows // chunks


def current_sigma(extra_options: dict) -> float:
    sigmas = extra_options["sigmas"]
    return float(sigmas[0].item() if hasattr(sigmas[0], "item") else sigmas[0])


def entry_name(lid: str, chunk: str, tensor: str) -> str:
    """Tensor name inside a slot file: ``input1.0/cond0/k``."""
    return f"{lid}/{chunk}/{tensor}"


class OccurrenceCounter:
    """Counts how often a (layer, chunk, sigma) was evaluated in one sampling pass.

    Second-order samplers evaluate the model twice at the same sigma (Heun: the corrector of step i and
    the predictor of step i+1) with different latents, so sigma alone does not identify an evaluation;
    (sigma, occurrence) does. Counting per layer and chunk makes split cond/uncond calls count alike.
    """

    def __init__(self):
        self._counts: dict[tuple[str, str, float], int] = defaultdict(int)

    def next(self, lid: str, chunk: str, sigma: float) -> int:
        key = (lid, chunk, sigma)
        occurrence = self._counts[key]
        self._counts[key] += 1
        return occurrence


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
