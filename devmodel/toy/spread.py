"""How much RefDrop's measured gaps vary from one seed block to the next: the basis of the test margins.

    python -m devmodel.toy.spread [--blocks 8] [--block-size 36] [--refs 3] [--json out.json]

The test (tests/test_toymodel.py) measures one block: seeds 0..N-1 against ``--refs`` references. This generates
the test's block and ``--blocks`` more disjoint blocks of the same size (seeds N..2N-1, 2N..), with the same
references, and prints per block the paired gaps (same seeds across c) the test checks:
c = 0.6 minus c = 0 and c = -0.5 minus c = 0 for colour, background, both (look) and prompt following, plus the
c = 0.6 look gap through every non-exact profile. Smaller blocks (halves, thirds) come from the same images, so
the cost of a cheaper test can be judged without generating again (the test uses the halves: 18 seeds; its
thresholds are the "mean-3sd" / "mean+3sd" columns of those, rounded toward the safe side).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lib_refdrop.reference.profiles import PROFILES
from lib_refdrop.reference.store import ReferenceStore

from ..pipeline import Pipeline
from . import MODEL
from .data import Attributes, classify
from .measure import ATTRS, Reference, prompts_for, save_references, tally

STRENGTHS = (0.6, -0.5)


def block_images(pipe: Pipeline, store: ReferenceStore, refs: dict[str, list[Reference]], seeds: list[int]
                 ) -> dict[str, list[tuple[Reference, list[Attributes]]]]:
    """Per condition ("plain", "c=0.6", "c=-0.5", "<profile> c=0.6"), per reference, every image's attributes.

    Generated exactly as the test does (one batch per reference and strength over the whole block).
    """
    shapes = prompts_for(len(seeds))
    plain = [classify(img) for img in pipe.generate(shapes, seeds)]
    out = {"plain": [(ref, plain) for ref in refs["exact"]]}
    for profile, prefs in refs.items():
        for rfg in STRENGTHS if profile == "exact" else (0.6,):
            key = f"c={rfg}" if profile == "exact" else f"{profile} c={rfg}"
            out[key] = [(ref, [classify(img) for img in pipe.use_reference(store, ref.name, rfg, shapes, seeds)])
                        for ref in prefs]
    return out


def sub_block_gaps(images: dict[str, list[tuple[Reference, list[Attributes]]]], size: int) -> list[dict[str, float]]:
    """The gaps (condition minus plain, every attribute) of each run of ``size`` consecutive seeds in a block."""
    n = len(images["plain"][0][1])
    rows = []
    for start in range(0, n - size + 1, size):
        shapes = prompts_for(n)[start:start + size]
        cut = {key: tally([(ref, seen[start:start + size]) for ref, seen in per_ref], shapes)
               for key, per_ref in images.items()}
        row = {f"plain {a}": getattr(cut["plain"], a) for a in ATTRS}
        for key, shares in cut.items():
            if key != "plain":
                row.update({f"{key} {a}": getattr(shares, a) - getattr(cut["plain"], a) for a in ATTRS})
        rows.append(row)
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, tuple[float, float, float, float]]:
    """Per column: mean, sample standard deviation, mean - 3 sd and mean + 3 sd over the blocks."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        out[key] = (mean, sd, mean - 3 * sd, mean + 3 * sd)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=8, help="calibration blocks, besides the test's own block 0")
    ap.add_argument("--block-size", type=int, default=36)
    ap.add_argument("--refs", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write every block's gaps here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    pipe = Pipeline.load(MODEL)
    size = args.block_size
    blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(Path(tmp))
        refs = {"exact": save_references(pipe, store, args.refs)}
        for name in PROFILES:
            if name != "exact":
                refs[name] = save_references(pipe, store, args.refs, profile=name, prefix=f"{name}-")
        for b in range(args.blocks + 1):
            blocks.append(block_images(pipe, store, refs, list(range(b * size, (b + 1) * size))))
            print(f"block {b} done ({time.monotonic() - started:.0f}s)", flush=True)
    report = {}
    for div in (1, 2, 3):
        sub = size // div
        per_block = [sub_block_gaps(images, sub) for images in blocks]
        test_row = per_block[0][0]                      # seeds 0..sub-1: what a test of this size measures
        calib = [row for rows in per_block[1:] for row in rows] + per_block[0][1:]
        stats = summary(calib)
        report[sub] = dict(test=test_row, calibration=calib, stats=stats)
        print(f"\nblock size {sub}: {len(calib)} calibration blocks (disjoint from the test's seeds 0..{sub - 1})")
        print(f"{'quantity':<28} {'mean':>7} {'sd':>6} {'mean-3sd':>9} {'mean+3sd':>9} {'test block':>10}")
        for key, (mean, sd, low, high) in stats.items():
            print(f"{key:<28} {mean:>7.3f} {sd:>6.3f} {low:>9.3f} {high:>9.3f} {test_row[key]:>10.3f}")
        if div == 1:
            print("per block:", " | ".join(key for key in stats))
            for i, row in enumerate([test_row] + calib):
                print(f"  {'test' if i == 0 else i:>4}: " + " ".join(f"{row[k]:+.3f}" for k in stats))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
