"""The reference sources' effect on the trained toy model, per block of seeds: the basis of the margins in
tests/test_toymodel_sources.py.

    python -m devmodel.toy.measure_sources [--blocks 20] [--block-size 18] [--batch-block-size 72] [--parts all]
    python -m devmodel.toy.measure_sources --test-block       # only the test's own block (seeds 0..17, 0..71)

Every gap is paired: a condition's share minus the share of the same seeds and prompts generated plainly.
- image references (the 3 references of tests/test_toymodel.py, Saved from their generation): new images at the
  block's seeds, prompts cycling the shapes, guided at c = 0.6 by the stored reference ("stored"), by its image
  (``to_pil(image, scale=1)``) baked into a reference with the block's first seed ("baked"), and by the same image
  live ("live", whose noise is seeded by the batch's first seed too, so it must agree with the baked one); shares
  of new images with the reference's shape colour, background, both ("look"), and with the prompted shape;
- masks: the stored references at c = 0.6 with a mask over the reference image's shape ("shape mask": its pixels
  nearer the shape colour than the background colour) and with the inverse ("background mask");
- the batch's first image: the block's seeds cut into groups of ``GROUP`` with one prompt per group (the shapes in
  turn); each group is one generation at c = 0.6, as one batch ("batch") and as ``BATCH_COUNT`` batches
  ("batch xN"; "batch xN later" = the images of the batches after the first); shares of images 1..n with image
  0's colour / background / look, and their mean pixel distance to image 0, against the same images generated
  plainly.
Blocks 1..N (seeds from ``--start`` / ``--batch-start``, default: right after the test's) calibrate; block 0 (seeds
0..size-1 and 0..batch size-1) is the test's and is measured only with ``--test-block``, once the thresholds are
fixed. Per block the gaps are printed, then each gap's mean, sd and mean -/+ 3 sd over the blocks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_refdrop.reference.store import ReferenceStore

from ..pipeline import Pipeline, to_pil
from . import MODEL
from .data import BACKGROUNDS, SHAPE_COLOURS, SHAPES, Attributes, classify
from .measure import Reference, Shares, prompts_for, save_references
from .spread import summary

RFG = 0.6
N_REFS = 3           # the references of tests/test_toymodel.py
BLOCK_SIZE = 18
BATCH_BLOCK_SIZE = 72  # batch reference: seeds per block (12 groups; 36 left its shares' bounds below zero)
GROUP = 6            # batch reference: images per generation (image 0 and the 5 that attend to it)
BATCH_COUNT = 2      # "batch xN": each group generated as this many batches of GROUP / BATCH_COUNT images
ATTRS = ("colour", "background", "both", "prompt")
Images = dict[str, list[tuple[Reference, torch.Tensor]]]  # per condition, per reference: the block's images
IMAGE_CONDITIONS = ("stored", "baked", "live", "shape mask", "background mask")


def share_of_matches(pairs: list[tuple[Attributes, Attributes, str]]) -> Shares:
    """Shares of ``(target, seen, prompted shape)`` triples where ``seen`` has the target's colour, background,
    both, and the prompted shape. An attribute the target lacks (no shape drawn) never matches."""
    def same(target, seen, attr: str) -> bool:
        return getattr(target, attr) is not None and getattr(target, attr) == getattr(seen, attr)

    n = len(pairs)
    colour = sum(same(t, s, "colour") for t, s, _ in pairs)
    background = sum(same(t, s, "background") for t, s, _ in pairs)
    both = sum(same(t, s, "colour") and same(t, s, "background") for t, s, _ in pairs)
    prompt = sum(s.shape == shape for _, s, shape in pairs)
    return Shares(n, colour / n, background / n, both / n, prompt / n)


def shape_mask(image: torch.Tensor, look: Attributes) -> Image.Image:
    """A subject mask of a reference image ``[3, S, S]``: 255 where a pixel is nearer the reference's shape colour
    than its background colour (devmodel/toy/data.py's palette)."""
    rgb = ((image.clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
    to_shape = (rgb - torch.tensor(SHAPE_COLOURS[look.colour])).norm(dim=-1)
    to_background = (rgb - torch.tensor(BACKGROUNDS[look.background])).norm(dim=-1)
    return Image.fromarray(np.where((to_shape < to_background).numpy(), 255, 0).astype(np.uint8), mode="L")


def inverse(mask: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(mask), mode="L")


@dataclass
class SavedReference:
    """A test reference with what the sources need of it: its image (pixels, and as the PIL image a user would
    give) and its shape mask."""

    ref: Reference
    image: torch.Tensor
    pil: Image.Image
    mask: Image.Image


def prepare_references(pipe: Pipeline, store: ReferenceStore, count: int = N_REFS) -> list[SavedReference]:
    out = []
    for ref in save_references(pipe, store, count):
        image = pipe.generate([ref.shape], [ref.seed])[0]   # the Save's own image (Save leaves it plain)
        out.append(SavedReference(ref, image, to_pil(image, scale=1), shape_mask(image, ref.look)))
    return out


def guided_images(pipe: Pipeline, store: ReferenceStore, s: SavedReference, seeds: list[int],
                  condition: str) -> torch.Tensor:
    """The block's images (prompts cycling the shapes) under one condition of ``IMAGE_CONDITIONS`` for one
    reference; "baked" bakes the reference's image first, with the block's first seed (which seeds "live" too)."""
    shapes = prompts_for(len(seeds))
    batch = [(shapes, seeds)]
    if condition == "stored":
        return pipe.use_reference(store, s.ref.name, RFG, shapes, seeds)
    if condition == "baked":
        baked_name = f"{s.ref.name}-baked"
        pipe.bake_image(store, baked_name, s.pil, seed=seeds[0])
        return pipe.generate_with(store, batch, reference=baked_name, rfg=RFG)[0]
    if condition == "live":
        return pipe.generate_with(store, batch, source="image", image=s.pil, rfg=RFG)[0]
    mask = {"shape mask": s.mask, "background mask": inverse(s.mask)}[condition]
    return pipe.generate_with(store, batch, reference=s.ref.name, rfg=RFG, mask=mask)[0]


def image_reference_images(pipe: Pipeline, store: ReferenceStore, saved: list[SavedReference],
                           seeds: list[int], conditions=IMAGE_CONDITIONS) -> Images:
    """Per condition, per reference, the block's images."""
    return {c: [(s.ref, guided_images(pipe, store, s, seeds, c)) for s in saved] for c in conditions}


def baked_live_difference(images: Images) -> float:
    """The largest difference between the baked and the live image reference's images (pixels in [-1, 1])."""
    return max(float((baked - live).abs().max())
               for (_, baked), (_, live) in zip(images["baked"], images["live"], strict=True))


def image_reference_gaps(images: Images, plain: list[Attributes],
                         shapes: list[str]) -> dict[str, float]:
    """``"<condition> <attr>"``: the condition's share minus the plain share, pooled over the references
    (``"plain <attr>"``: the plain share itself)."""
    def shares(per_ref) -> Shares:
        return share_of_matches([(ref.look, seen, shape) for ref, seen_all in per_ref
                                 for seen, shape in zip(seen_all, shapes, strict=True)])

    refs = [ref for ref, _ in next(iter(images.values()))]
    base = shares([(ref, plain) for ref in refs])
    row = {f"plain {a}": getattr(base, a) for a in ATTRS}
    for condition, per_ref in images.items():
        got = shares([(ref, [classify(img) for img in batch]) for ref, batch in per_ref])
        row.update({f"{condition} {a}": getattr(got, a) - getattr(base, a) for a in ATTRS})
    return row


def batch_groups(seeds: list[int]) -> list[tuple[str, list[int]]]:
    """The block's seeds in groups of ``GROUP``, one prompt per group (the shapes in turn)."""
    return [(SHAPES[g % len(SHAPES)], seeds[i:i + GROUP]) for g, i in enumerate(range(0, len(seeds), GROUP))]


def pixel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def batch_generation(pipe: Pipeline, store: ReferenceStore, shapes: list[str], seeds: list[int],
                     count: int) -> torch.Tensor:
    """One generation with the batch's first image as the reference: ``count`` batches of equal size."""
    size = len(seeds) // count
    return torch.cat(pipe.generate_with(store, [(shapes[i:i + size], seeds[i:i + size])
                                                for i in range(0, len(seeds), size)], source="batch", rfg=RFG))


def batch_reference_gaps(pipe: Pipeline, store: ReferenceStore, seeds: list[int],
                         counts: tuple[int, ...] = (1, BATCH_COUNT)) -> dict[str, float]:
    """Per group of ``GROUP`` seeds, one generation per batch count in ``counts``. ``"<condition> <attr>"``: shares
    of images 1..n with image 0's attributes, guided minus plain (the same images generated plainly); image 0 is
    the plain image 0 (a batch source generates it plainly). ``"<condition> distance"``: the images' mean pixel
    distance to image 0, guided minus plain (< 0: toward it). "batch xN later": the images after the first batch.
    """
    conditions = {1: ("batch",), BATCH_COUNT: (f"batch x{BATCH_COUNT}", f"batch x{BATCH_COUNT} later")}
    wanted = [c for count in counts for c in conditions[count]]
    pairs: dict[str, list] = {c: [] for c in ["plain", "plain later"] + wanted}
    distances: dict[str, list[float]] = {c: [] for c in pairs}
    split = GROUP // BATCH_COUNT
    for shape, group in batch_groups(seeds):
        shapes = [shape] * len(group)
        plain = pipe.generate(shapes, group)
        images = {"plain": (plain, 1), "plain later": (plain, split)}
        for count in counts:
            guided = batch_generation(pipe, store, shapes, group, count)
            images[conditions[count][0]] = (guided, 1)
            if count > 1:
                images[conditions[count][1]] = (guided, split)
        target = classify(plain[0])
        for condition, (batch, first) in images.items():
            if classify(batch[0]) != target:
                raise AssertionError(f"{condition}: image 0 is not the plain image 0")
            pairs[condition] += [(target, classify(img), shape) for img in batch[first:]]
            distances[condition] += [pixel_distance(img, batch[0]) for img in batch[first:]]
    row = {f"batch plain {a}": getattr(share_of_matches(pairs["plain"]), a) for a in ATTRS[:3]}
    for condition in wanted:
        base = "plain later" if condition.endswith("later") else "plain"
        got, ref = share_of_matches(pairs[condition]), share_of_matches(pairs[base])
        row.update({f"{condition} {a}": getattr(got, a) - getattr(ref, a) for a in ATTRS[:3]})
        row[f"{condition} distance"] = statistics.fmean(distances[condition]) - statistics.fmean(distances[base])
    return row


def image_block_gaps(pipe: Pipeline, store: ReferenceStore, saved: list[SavedReference], seeds: list[int],
                     conditions=IMAGE_CONDITIONS) -> tuple[dict[str, float], Images]:
    """The image references' and masks' gaps over one block of seeds (with the paired contrasts), and the images."""
    shapes = prompts_for(len(seeds))
    plain = [classify(img) for img in pipe.generate(shapes, seeds)]
    images = image_reference_images(pipe, store, saved, seeds, conditions)
    row = image_reference_gaps(images, plain, shapes)
    if {"stored", "baked"} <= set(conditions):
        row["baked - stored both"] = row["baked both"] - row["stored both"]
    for attr in ("colour", "background"):
        if {"stored", "shape mask"} <= set(conditions):
            row[f"shape mask - unmasked {attr}"] = row[f"shape mask {attr}"] - row[f"stored {attr}"]
        if {"shape mask", "background mask"} <= set(conditions):
            row[f"shape - background mask {attr}"] = row[f"shape mask {attr}"] - row[f"background mask {attr}"]
    if "shape mask" in conditions:
        row["shape mask colour - background"] = row["shape mask colour"] - row["shape mask background"]
    return row, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=20, help="calibration blocks (disjoint from the test's block 0)")
    ap.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    ap.add_argument("--batch-block-size", type=int, default=BATCH_BLOCK_SIZE)
    ap.add_argument("--start", type=int, default=None, help="first seed of calibration block 1 (default: size)")
    ap.add_argument("--batch-start", type=int, default=None, help="same, batch reference (default: its size)")
    ap.add_argument("--test-block", action="store_true", help="measure only the test's block (seeds 0..size-1)")
    ap.add_argument("--parts", choices=("all", "images", "batch"), default="all",
                    help="images: image references and masks only; batch: the batch's first image only")
    ap.add_argument("--json", type=Path, help="also write every block's gaps here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    size = args.block_size
    start = size if args.start is None else args.start
    bsize = args.batch_block_size
    bstart = bsize if args.batch_start is None else args.batch_start
    starts = [(0, 0)] if args.test_block else [(start + b * size, bstart + b * bsize) for b in range(args.blocks)]
    if not args.test_block and (start < size or bstart < bsize):
        raise SystemExit("calibration blocks must not overlap the test's seeds (0..size-1, 0..batch size-1)")
    images_on, batch_on = args.parts in ("all", "images"), args.parts in ("all", "batch")
    pipe = Pipeline.load(MODEL)
    rows, worst = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(Path(tmp))
        saved = prepare_references(pipe, store)
        looks = ", ".join(f"{s.ref.look.colour}/{s.ref.look.background} {s.ref.shape}" for s in saved)
        print(f"references: {looks}; c = {RFG}; blocks of {size} seeds; batch groups of {GROUP}", flush=True)
        for b, (first, bfirst) in enumerate(starts):
            row, done = {}, []
            if images_on:
                row, images = image_block_gaps(pipe, store, saved, list(range(first, first + size)))
                worst.append(baked_live_difference(images))
                done.append(f"seeds {first}..{first + size - 1} (baked-live max |diff| {worst[-1]:.2e})")
            if batch_on:
                row.update(batch_reference_gaps(pipe, store, list(range(bfirst, bfirst + bsize))))
                done.append(f"batch seeds {bfirst}..{bfirst + bsize - 1}")
            rows.append(row)
            print(f"block {b + (0 if args.test_block else 1)}: {', '.join(done)} ({time.monotonic() - started:.0f}s)",
                  flush=True)
    print_report(rows, [first if images_on else bfirst for first, bfirst in starts])
    if worst:
        print(f"baked vs live: largest pixel difference over every block {max(worst):.2e}")
    if args.json:
        args.json.write_text(json.dumps(dict(starts=starts, size=size, batch_size=bsize, rows=rows,
                                             baked_live_max=worst), indent=1))
    print(f"({time.monotonic() - started:.0f}s)")


def print_report(rows: list[dict[str, float]], firsts: list[int]) -> None:
    """Every block's gaps, then (over two blocks or more) each gap's mean, sd and 3-sd bounds."""
    keys = list(rows[0])
    print("per block (first seed):", " | ".join(keys))
    for first, row in zip(firsts, rows, strict=True):
        print(f"  {first:>5}: " + " ".join(f"{row[k]:+.3f}" for k in keys))
    if len(rows) > 1:
        print(f"\n{len(rows)} blocks")
        print(f"{'quantity':<36} {'mean':>7} {'sd':>6} {'mean-3sd':>9} {'mean+3sd':>9}")
        for key, (mean, sd, low, high) in summary(rows).items():
            print(f"{key:<36} {mean:>7.3f} {sd:>6.3f} {low:>9.3f} {high:>9.3f}")


if __name__ == "__main__":
    main()
