"""What a half mask transfers on the trained character model, with spreads over disjoint seed blocks.

    python -m devmodel.char.masks [--refs 3] [--blocks 4] [--block-size 12] [--rfg 1.0] [--first-seed 12]

A mask keeps the reference's tokens under its white half (attn/masks.py). The character stands in the middle, so
the left half of a reference holds a wide strip of its background, half its head and half its torso, and the top
half mostly its head, the arms and only the top rows of the torso: background and body colour (``LEFT_HALF``) are
what a left half carries and a top half carries much less. Per block of new-image seeds (from ``--first-seed``;
seeds 0..size-1 are the test's block, tests/test_charmodel.py): the paired gaps (masked minus plain, same seeds
and prompts) of each free attribute and of ``LEFT_HALF`` for the left-half and the top-half mask, both drawn
square, and their spread over the blocks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_refdrop.reference.store import ReferenceStore

from ..pipeline import Pipeline
from . import MODEL
from .data import SIZE
from .measure import BLOCK_SIZE, KEYS, Generated, engine_patch, save_references
from .spread import blocks_of, spread

MASK_RFG = 1.0  # half the reference's tokens pull half as hard: the strongest c keeps the effect well above noise
# What the left half of a reference holds and its top half hardly does (the head is in both): their mean gap is what
# a left-half mask transfers.
LEFT_HALF = ("background", "body")
MEASURES = (*KEYS, "left half")


def with_left_half(gaps: dict[str, float]) -> dict[str, float]:
    """``gaps`` (keys of measure.KEYS) and their "left half": the mean gap of the attributes of LEFT_HALF."""
    return {**gaps, "left half": sum(gaps[a] for a in LEFT_HALF) / len(LEFT_HALF)}


def half_mask(half: str, width: int = SIZE, height: int = SIZE) -> Image.Image:
    """A ``width`` x ``height`` mask ("L") that is white on its ``half`` ("left" or "top")."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    if half == "left":
        pixels[:, : width // 2] = 255
    elif half == "top":
        pixels[: height // 2, :] = 255
    else:
        raise ValueError(half)
    return Image.fromarray(pixels, mode="L")


def measure(pipe: Pipeline, store: ReferenceStore, refs, seeds: list[int], block_size: int,
            rfg: float = MASK_RFG) -> dict[str, list[dict[str, float]]]:
    """Per half: one dict of gaps vs plain (MEASURES) per block."""
    out: dict[str, list[dict[str, float]]] = {"left": [], "top": []}
    for block in blocks_of(seeds, block_size):
        gen = Generated(pipe, refs, block)
        gen.plain()
        for half in out:
            gen.add(half, engine_patch(pipe, store, rfg, mask=half_mask(half)))
            out[half].append(with_left_half(gen.gaps(half)))
        print("block", block[0], {h: {k: round(v[-1][k], 3) for k in MEASURES} for h, v in out.items()}, flush=True)
    return out


def table(result: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| mask | blocks | " + " | ".join(f"gap {k}" for k in MEASURES) + " |",
             "|" + "---|" * (len(MEASURES) + 2)]
    for half, rows in result.items():
        cells = [spread([r[k] for r in rows]) for k in MEASURES]
        lines.append(f"| {half} half | {len(rows)} | " + " | ".join(c.cell() for c in cells) + " |")
        lines.append(f"| {half}: mean - 3 sd | | " + " | ".join(f"{c.low:+.3f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    ap.add_argument("--rfg", type=float, default=MASK_RFG)
    ap.add_argument("--first-seed", type=int, default=BLOCK_SIZE, help="the first block's first seed (after the "
                                                                        "test's block)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    pipe = Pipeline.load(MODEL)
    size = args.block_size
    if args.first_seed < size:
        ap.error("seeds 0..block-size-1 are the test's block")
    seeds = list(range(args.first_seed, args.first_seed + args.blocks * size))
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(Path(tmp))
        refs = save_references(pipe, store, args.refs)
        print(f"c = {args.rfg}; seeds {seeds[0]}..{seeds[-1]} in blocks of {size}, n = {args.refs * size} images "
              "per block and mask", flush=True)
        print(table(measure(pipe, store, refs, seeds, size, args.rfg)))
    print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
