"""RefDrop's effect on the trained toy model, measured from pixels.

    python -m devmodel.toy.measure [--refs 6] [--seeds 60]

For a few references (saved with RefDrop Save at their own seed and shape), new images at other seeds and with
every shape prompt are generated with RefDrop Use at several strengths c. Printed per c:
- consistency: share of new images with the reference's shape colour, background, and both (its "look");
- prompt following: share whose shape is the one their prompt names;
c = 0 is the plain model (the diversity baseline); c < 0 should push the shares below it. Then, for every
storage profile in ``lib_refdrop.reference.profiles.PROFILES``: the share of the exact profile's colour effect it keeps.
Images at the same seed are paired across c, so differences are measured on the same noise.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_refdrop.reference.profiles import PROFILES
from lib_refdrop.reference.store import ReferenceStore

from ..pipeline import Pipeline
from . import MODEL
from .data import SHAPES, Attributes, classify

ATTRS = ("colour", "background", "both", "prompt")
RFGS = (0.0, 0.2, 0.4, 0.6, 1.0, -0.5)
PROFILE_RFG = 0.6
REFERENCE_SEEDS = 10_000   # references come from seeds 10000, 10001, ...; new images from seeds 0, 1, ...


@dataclass(frozen=True)
class Reference:
    name: str
    shape: str
    seed: int
    look: Attributes


@dataclass(frozen=True)
class Shares:
    """Shares of ``n`` images (pooled over references) with the reference's attributes / the prompted shape."""

    n: int
    colour: float
    background: float
    both: float
    prompt: float

    def se(self, attr: str = "colour") -> float:
        """Binomial standard error of one share."""
        p = getattr(self, attr)
        return math.sqrt(max(p * (1 - p), 1e-12) / self.n)


def prompts_for(n: int) -> list[str]:
    """The prompt of new image i: every shape in turn, so each reference is tried with every prompt."""
    return [SHAPES[i % len(SHAPES)] for i in range(n)]


def save_references(pipe: Pipeline, store: ReferenceStore, count: int, profile: str = "exact",
                    prefix: str = "ref") -> list[Reference]:
    """The first ``count`` reference seeds whose image clearly shows the prompted shape (shapes in turn)."""
    def shows(image, shape):
        look = classify(image)
        return look.shape == shape and look.colour is not None

    return [Reference(name, shape, seed, classify(image)) for name, shape, seed, image in
            pipe.save_first_references(store, count, shows, profile, prefix, REFERENCE_SEEDS)]


def tally(per_ref: list[tuple[Reference, list[Attributes]]], shapes: list[str]) -> Shares:
    n = colour = background = both = prompt = 0
    for ref, seen in per_ref:
        for attrs, shape in zip(seen, shapes, strict=True):
            n += 1
            colour += attrs.colour == ref.look.colour
            background += attrs.background == ref.look.background
            both += attrs.colour == ref.look.colour and attrs.background == ref.look.background
            prompt += attrs.shape == shape
    return Shares(n, colour / n, background / n, both / n, prompt / n)


def measure_rfg(pipe: Pipeline, store: ReferenceStore, refs: list[Reference], rfg: float, seeds: list[int],
                plain: list[Attributes] | None = None) -> Shares:
    """Shares at strength ``rfg`` (c = 0 generates once, plainly, and compares with every reference)."""
    shapes = prompts_for(len(seeds))
    if rfg == 0:
        plain = plain or [classify(img) for img in pipe.generate(shapes, seeds)]
        return tally([(ref, plain) for ref in refs], shapes)
    per_ref = [(ref, [classify(img) for img in pipe.use_reference(store, ref.name, rfg, shapes, seeds)])
               for ref in refs]
    return tally(per_ref, shapes)


def plain_variety(pipe: Pipeline, seeds: list[int]) -> dict[str, int]:
    """How many distinct values each attribute takes in plain samples (the data set is not trivial)."""
    seen = [classify(img) for img in pipe.generate(prompts_for(len(seeds)), seeds)]
    return {"colour": len({a.colour for a in seen} - {None}),
            "background": len({a.background for a in seen} - {None}),
            "shape": len({a.shape for a in seen} - {None})}


def effect_kept(exact: Shares, other: Shares, plain: Shares) -> float:
    """The share of the exact profile's effect on the look (colour and background, over plain) another keeps."""
    base = exact.both - plain.both
    return (other.both - plain.both) / base if base else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=60, help="new images per reference and strength")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    pipe = Pipeline.load(MODEL)
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(Path(tmp))
        refs = save_references(pipe, store, args.refs)
        looks = ", ".join(f"{r.look.colour}/{r.look.background} {r.shape}" for r in refs)
        print(f"references ({len(refs)}): {looks}; {args.seeds} new seeds each, prompts cycle {', '.join(SHAPES)}")
        print(f"sampler {pipe.sampler}, {pipe.steps} steps, CFG {pipe.cfg}")
        print(f"{'c':>6} {'n':>5} {'colour':>14} {'background':>14} {'both':>14} {'prompt':>14}")
        results = {}
        for rfg in RFGS:
            s = results[rfg] = measure_rfg(pipe, store, refs, rfg, seeds)
            cells = " ".join(f"{getattr(s, a):>7.3f} ±{s.se(a):.3f}" for a in ATTRS)
            print(f"{rfg:>6.2f} {s.n:>5} {cells}")
        plain = results[0.0]
        away = results[-0.5]
        print(f"diversity: c=-0.5 shares colour {away.colour:.3f} / background {away.background:.3f} / both "
              f"{away.both:.3f} vs plain {plain.colour:.3f} / {plain.background:.3f} / {plain.both:.3f}")
        print(f"plain variety over {args.seeds} seeds: {plain_variety(pipe, seeds)}")
        for name in PROFILES:
            if name == "exact":
                kept = 1.0
            else:
                prefs = save_references(pipe, store, args.refs, profile=name, prefix=f"{name}-")
                kept = effect_kept(results[PROFILE_RFG], measure_rfg(pipe, store, prefs, PROFILE_RFG, seeds), plain)
            print(f"profile {name}: keeps {kept:.2f} of the exact effect on the look (both) at c={PROFILE_RFG}")
    print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
