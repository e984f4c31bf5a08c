"""RefDrop's effect on the trained character model, measured from pixels, with spreads over disjoint seed blocks.

    python -m devmodel.char.measure [--refs 3] [--blocks 4] [--block-size 12] [--profiles]

References are saved with RefDrop Save at their own seed and pose; new images at other seeds, prompts cycling the
poses, are generated with RefDrop Use at several strengths c. Per c: the share of new images that take each of the
reference's free attributes (background, head, body, pattern; the prompt names only the pose), their mean
("pooled") and all four at once ("look"), and prompt following (the pose drawn is the one prompted). Gaps are
paired: a condition minus plain at the same seeds and prompts, per block of ``--block-size`` seeds; ± is the sd
over the blocks. Seeds 0..block-size-1 are the test's block (tests/test_charmodel.py) and are not used here
unless ``--test-block``. With ``--profiles``: ``effect_kept`` for every storage profile in
``lib_refdrop.reference.profiles.PROFILES``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.candidates import CANDIDATES, offering
from lib_refdrop.reference.profiles import PROFILES, get_profile
from lib_refdrop.reference.store import ReferenceStore

from ..pipeline import Pipeline
from . import MODEL
from .data import FREE, POSES, Attributes, classify
from .spread import Spread, blocks_of, spread

RFGS = (0.0, 0.2, 0.4, 0.6, 1.0, -0.5)
PROFILE_RFG = 0.6
PSNR_RFGS = (0.3, 1.0)
REFERENCE_SEEDS = 10_000   # references come from seeds 10000, 10001, ...; new images from seeds 0, 1, ...
BLOCK_SIZE = 12            # the test's block: seeds 0..11
KEYS = (*FREE, "pooled", "look", "prompt")


@dataclass(frozen=True)
class Reference:
    name: str
    pose: str
    seed: int
    look: Attributes
    image: torch.Tensor = field(repr=False, compare=False)


def poses_for(n: int) -> list[str]:
    """The prompt of new image i: every pose in turn, so each reference is tried with every prompt."""
    return [POSES[i % len(POSES)] for i in range(n)]


def save_references(pipe: Pipeline, store: ReferenceStore, count: int, profile: str = "exact",
                    prefix: str = "ref") -> list[Reference]:
    """The first ``count`` reference seeds whose image shows the prompted pose (poses in turn); ``exact`` unless
    said, whatever the engine's default is: every measure here is relative to it."""
    return [Reference(name, pose, seed, classify(image), image) for name, pose, seed, image in
            pipe.save_first_references(store, count, lambda image, pose: classify(image).pose == pose, profile,
                                       prefix, REFERENCE_SEEDS)]


def save_like(pipe: Pipeline, store: ReferenceStore, refs: list[Reference], profile: str) -> list[Reference]:
    """The same references (seeds, poses) saved with another storage profile, named ``<profile>-<name>``."""
    out = []
    for ref in refs:
        name = f"{profile}-{ref.name}"
        image = pipe.save_reference(store, name, ref.pose, ref.seed, profile)
        out.append(Reference(name, ref.pose, ref.seed, classify(image), image))
    return out


def matches(ref: Reference, seen: Attributes, pose: str) -> dict[str, float]:
    """Per key of KEYS: 1 where the new image takes the reference's attribute (or follows its prompt)."""
    same = {a: float(getattr(seen, a) == getattr(ref.look, a)) for a in FREE}
    same["pooled"] = sum(same[a] for a in FREE) / len(FREE)
    same["look"] = float(all(same[a] for a in FREE))
    same["prompt"] = float(seen.pose == pose)
    return same


def shares(per_ref: list[tuple[Reference, list[Attributes]]], poses: list[str]) -> dict[str, float]:
    """Shares of the images (pooled over references) per key of KEYS."""
    total, n = dict.fromkeys(KEYS, 0.0), 0
    for ref, seen in per_ref:
        for attrs, pose in zip(seen, poses, strict=True):
            n += 1
            for key, value in matches(ref, attrs, pose).items():
                total[key] += value
    return {key: value / n for key, value in total.items()}


class Generated:
    """Images per (condition, reference) over one block of seeds, generated in one batch each, and their classes."""

    def __init__(self, pipe: Pipeline, refs: list[Reference], seeds: list[int]):
        self.pipe, self.refs, self.seeds = pipe, refs, seeds
        self.poses = poses_for(len(seeds))
        self.images: dict[str, list[torch.Tensor]] = {}
        self.attrs: dict[str, list[list[Attributes]]] = {}

    def plain(self) -> None:
        image = self.pipe.generate(self.poses, self.seeds)
        self._keep("plain", [image] * len(self.refs))

    def add(self, key: str, patch_of) -> None:
        """``patch_of(ref, first_seed)`` -> (a pass's PassPatches, cleanup or None) for each reference."""
        out = []
        for ref in self.refs:
            patches, cleanup = patch_of(ref, self.seeds[0])
            try:
                out.append(self.pipe.generate(self.poses, self.seeds, patches))
            finally:
                if cleanup is not None:
                    cleanup()
        self._keep(key, out)

    def _keep(self, key: str, images: list[torch.Tensor]) -> None:
        self.images[key] = images
        cache: dict[int, list[Attributes]] = {}
        self.attrs[key] = [cache.setdefault(id(img), [classify(x) for x in img]) for img in images]

    def shares(self, key: str) -> dict[str, float]:
        return shares(list(zip(self.refs, self.attrs[key], strict=True)), self.poses)

    def gaps(self, key: str) -> dict[str, float]:
        """Shares of ``key`` minus plain's, per key of KEYS (prompt included)."""
        mine, plain = self.shares(key), self.shares("plain")
        return {k: mine[k] - plain[k] for k in KEYS}

    def kept(self, key: str, full: str) -> float:
        """Mean over images of ``1 - |out_key - out_full| / |out_full - out_plain|`` (benchmarks/profiles.py's
        measure, on the final pixels)."""
        values = []
        for mine, ref, plain in zip(self.images[key], self.images[full], self.images["plain"], strict=True):
            for a, b, p in zip(mine, ref, plain, strict=True):
                base = float((b - p).norm())
                if base > 0:
                    values.append(1 - float((a - b).norm()) / base)
        return sum(values) / len(values) if values else math.nan


def engine_patch(pipe: Pipeline, store: ReferenceStore, rfg: float, **settings):
    """``patch_of`` for Generated.add: the engine's Use patch of each reference at ``rfg``."""
    return lambda ref, seed: pipe.use_patches(store, ref.name, rfg, seed, **settings)


def psnr(out: torch.Tensor, target: torch.Tensor) -> float:
    """benchmarks/profiles.py's PSNR: the target's value range as peak."""
    mse = (out - target).pow(2).mean().item()
    peak = (target.max() - target.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


# -- effect kept by a storage profile ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EffectKept:
    """How much of the exact profile's effect a storage profile keeps on the character model."""

    profile: str
    share: Spread           # per block: pooled share gap of P vs plain / that of exact vs plain
    share_pooled: float     # the same ratio of the gaps summed over all blocks
    continuous: Spread      # per block: mean of 1 - |out_P - out_exact| / |out_exact - out_plain|
    psnr_db: dict[float, float]   # c -> same-seed PSNR of Use(P) against the Save image, pooled over references
    images: int             # new images per condition (references x seeds)
    seconds: float


_BASELINES: dict[tuple, tuple[list[Reference], list[Generated]]] = {}


def _baseline(pipe: Pipeline, store: ReferenceStore, refs: int, blocks: int, block_size: int, rfg: float,
              first_seed: int) -> tuple[list[Reference], list[Generated]]:
    """The exact references and the plain and exact images of every block, made once per store and settings."""
    key = (id(pipe), str(store.root), refs, blocks, block_size, rfg, first_seed)
    if key not in _BASELINES:
        exact = save_references(pipe, store, refs, prefix="kept-ref")
        seeds = list(range(first_seed, first_seed + blocks * block_size))
        made = []
        for block in blocks_of(seeds, block_size):
            gen = Generated(pipe, exact, block)
            gen.plain()
            gen.add("exact", engine_patch(pipe, store, rfg))
            made.append(gen)
        _BASELINES[key] = (exact, made)
    return _BASELINES[key]


def effect_kept(store: ReferenceStore, profile_name: str, *, pipe: Pipeline | None = None, refs: int = 3,
                blocks: int = 4, block_size: int = BLOCK_SIZE, rfg: float = PROFILE_RFG,
                first_seed: int = BLOCK_SIZE) -> EffectKept:
    """The share of the exact profile's RefDrop effect that storage profile ``profile_name`` keeps.

    ``refs`` references (saved in ``store`` with both profiles), ``blocks`` disjoint blocks of ``block_size`` new
    seeds from ``first_seed`` (default: after the test's block), strength ``rfg``. The exact references and the
    plain and exact images are made on the first call and reused by later calls with the same arguments.
    """
    get_profile(profile_name)  # an offered profile or a read-only one; RefDropError naming the offered ones
    started = time.monotonic()
    pipe = pipe or Pipeline.load(MODEL)
    exact, made = _baseline(pipe, store, refs, blocks, block_size, rfg, first_seed)
    with offering(CANDIDATES.values()):
        mine = exact if profile_name == "exact" else save_like(pipe, store, exact, profile_name)
    by_name = {e.name: m for e, m in zip(exact, mine, strict=True)}
    ratios, kept, gap_p, gap_e = [], [], 0.0, 0.0
    key = "exact" if profile_name == "exact" else f"profile {profile_name}"
    for gen in made:
        if key != "exact":
            gen.add(key, lambda ref, seed: pipe.use_patches(store, by_name[ref.name].name, rfg, seed))
        p, e = gen.gaps(key)["pooled"], gen.gaps("exact")["pooled"]
        ratios.append(p / e if e else math.nan)
        gap_p, gap_e = gap_p + p, gap_e + e
        kept.append(gen.kept(key, "exact"))
        if key != "exact":
            del gen.images[key], gen.attrs[key]
    psnrs = {}
    for c in PSNR_RFGS:
        mse = []
        for ref, own in zip(exact, mine, strict=True):
            out = pipe.use_reference(store, own.name, c, [ref.pose], [ref.seed])[0]
            mse.append(float((out - ref.image).pow(2).mean()))
        peak = max(float(r.image.max() - r.image.min()) for r in exact)
        mean = sum(mse) / len(mse)
        psnrs[c] = math.inf if mean == 0 else 10 * math.log10(peak ** 2 / mean)
    return EffectKept(profile_name, spread(ratios), gap_p / gap_e if gap_e else math.nan, spread(kept), psnrs,
                      refs * blocks * block_size, time.monotonic() - started)


# -- the c sweep ------------------------------------------------------------------------------------------------

def sweep(pipe: Pipeline, store: ReferenceStore, refs: list[Reference], seeds: list[int], block_size: int,
          rfgs=RFGS, sweep_blocks: int | None = None) -> dict[float, list[dict[str, float]]]:
    """Per c: one dict per block with the shares (keys of KEYS) and the gaps vs plain (``gap <key>``). Every block
    has plain and c = PROFILE_RFG (the tests' calibration); the other c only the first ``sweep_blocks`` blocks."""
    out: dict[float, list[dict[str, float]]] = {c: [] for c in rfgs}
    for index, block in enumerate(blocks_of(seeds, block_size)):
        gen = Generated(pipe, refs, block)
        gen.plain()
        for c in rfgs:
            if c not in (0, PROFILE_RFG) and sweep_blocks is not None and index >= sweep_blocks:
                continue
            key = "plain" if c == 0 else f"c={c}"
            if c != 0:
                gen.add(key, engine_patch(pipe, store, c))
            row = dict(gen.shares(key))
            row.update({f"gap {k}": v for k, v in gen.gaps(key).items()})
            out[c].append(row)
    return out


def sweep_table(result: dict[float, list[dict[str, float]]]) -> str:
    """Markdown: per c the shares (mean over blocks) and the pooled gap and prompt gap with their sd."""
    head = "| c | blocks | " + " | ".join(KEYS) + " | pooled gap vs plain | look gap | prompt gap vs plain |"
    lines = [head, "|" + "---|" * (len(KEYS) + 5)]
    for c, rows in result.items():
        cells = [f"{spread([r[k] for r in rows]).mean:.3f}" for k in KEYS]
        gaps = [spread([r[f"gap {k}"] for r in rows]) for k in ("pooled", "look", "prompt")]
        shown = ["0 (plain)", "0", "0"] if c == 0 else [g.cell() for g in gaps]
        lines.append(f"| {c:g} | {len(rows)} | " + " | ".join(cells) + " | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def block_table(result: dict[float, list[dict[str, float]]], c: float, first_seed: int, size: int) -> str:
    keys = [f"gap {k}" for k in KEYS]
    lines = ["| block | seeds | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for i, row in enumerate(result[c]):
        start = first_seed + i * size
        lines.append(f"| {i + 1} | {start}..{start + size - 1} | " + " | ".join(f"{row[k]:+.3f}" for k in keys) + " |")
    for label, fn in (("mean", lambda s: s.mean), ("sd", lambda s: s.sd), ("mean - 3 sd", lambda s: s.low)):
        cells = [f"{fn(spread([r[k] for r in result[c]])):+.3f}" for k in keys]
        lines.append(f"| {label} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=8, help="blocks with plain and c = 0.6 (the tests' calibration)")
    ap.add_argument("--sweep-blocks", type=int, default=2, help="of those, the blocks with every other c too")
    ap.add_argument("--profile-blocks", type=int, default=2, help="blocks for effect_kept")
    ap.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    ap.add_argument("--test-block", action="store_true", help="measure the test's own block (seeds 0..size-1)")
    ap.add_argument("--profiles", action="store_true", help="also effect_kept for every offered storage profile")
    ap.add_argument("--candidates", action="store_true", help="and for every candidate profile")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    pipe = Pipeline.load(MODEL)
    size = args.block_size
    first = 0 if args.test_block else size
    seeds = list(range(first, first + (1 if args.test_block else args.blocks) * size))
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(Path(tmp))
        refs = save_references(pipe, store, args.refs)
        looks = "; ".join(f"{r.look.background}/{r.look.head}/{r.look.body}/{r.look.pattern} {r.pose}" for r in refs)
        print(f"references (background/head/body/pattern pose): {looks}")
        print(f"sampler {pipe.sampler}, {pipe.steps} steps, CFG {pipe.cfg}; seeds {seeds[0]}..{seeds[-1]} in "
              f"blocks of {size}, n = {args.refs * size} images per block and condition", flush=True)
        if not args.no_sweep:
            result = sweep(pipe, store, refs, seeds, size, sweep_blocks=args.sweep_blocks)
            print(sweep_table(result))
            print(f"\nc = 0.6 per block (calibration of tests/test_charmodel.py):\n"
                  f"{block_table(result, 0.6, first, size)}")
            print(f"\nc = -0.5 per block:\n{block_table(result, -0.5, first, size)}", flush=True)
        if args.profiles:
            print("\n| profile | share effect kept (per block) | pooled | continuous kept | PSNR c=0.3 | PSNR c=1 | "
                  "s |\n|---|---|---|---|---|---|---|")
            for name in [*PROFILES, *(CANDIDATES if args.candidates else ())]:
                try:
                    r = effect_kept(store, name, pipe=pipe, refs=args.refs, blocks=args.profile_blocks, block_size=size,
                                    first_seed=first)
                except Exception as exc:  # a profile another part is still building: say so, measure the rest
                    print(f"| {name} | failed: {type(exc).__name__}: {exc} | | | | | |", flush=True)
                    continue
                print(f"| {name} | {r.share.cell(2)} | {r.share_pooled:.2f} | {r.continuous.cell(3)} | "
                      f"{r.psnr_db[0.3]:.1f} dB | {r.psnr_db[1.0]:.1f} dB | {r.seconds:.0f} |", flush=True)
    print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
