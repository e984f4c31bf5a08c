"""An RFG sweep picture for the README: docs/img/rfg-sweep.png.

How it is made (say so wherever it is shown): this is NOT a WebUI host and NOT Stable Diffusion. It is the small
trained toy model in devmodel/toy/ (a diffusers U-Net on 16x16 RGB pixels, no VAE, a learned "prompt" per shape),
driven through the library's diffusers host with RefDrop's own Save and Use code, exactly as devmodel/toy/measure.py
does. It stands in
for the WebUI's X/Y/Z plot of "[RefDrop] RFG coefficient", which cannot be rendered without a real host here.

- One reference is saved with RefDrop Save (prompt ``REFERENCE_SHAPE``, seed ``REFERENCE_SEED``: a yellow circle
  on a purple background) into a temporary store. It was picked by eye among the plain images of seeds
  10000..10031 (those devmodel/toy/measure.py draws references from) as a clean one with a distinctive look.
- Each row is one new seed, generated with the same prompt and RefDrop Use of that reference at every c in
  ``RFGS`` (c = 0 is the plain model). The row seeds (``ROW_SEEDS``) were picked by eye, before this sweep was first
  run, among the plain images of seeds 0..31: clean images whose colour and background both differ from the
  reference, with different starting looks; they are shown as they came out, not re-picked after the sweep. An
  illustration, not a measurement: devmodel/toy/TRAINING.md has the measured shares over 108 images.
- Sampler euler, 12 steps, CFG 3 (the toy model's defaults); each 16x16 image is upscaled with nearest neighbour.

    python -m tools.toy_sweep          # from the repository root; about 15 s on one CPU thread
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from devmodel.pipeline import Pipeline
from devmodel.toy import MODEL
from devmodel.toy.data import classify
from lib_refdrop.reference.store import ReferenceStore

REPO = Path(__file__).resolve().parents[1]

OUT = REPO / "docs" / "img" / "rfg-sweep.png"
REFERENCE_SHAPE = "circle"
REFERENCE_SEED = 10_029
REFERENCE_NAME = "toy-reference"
ROW_SEEDS = (2, 10, 19, 24)
RFGS = (-0.5, 0.0, 0.2, 0.4, 0.6, 1.0)

CELL = 96           # each 16x16 image, upscaled 6x
GAP = 6
LABEL_W = 78        # the "seed N" column
HEADER_H = 30       # the "c = ..." row
SEPARATOR = 18      # extra space between the reference column and the sweep
FOOTER_H = 40
BG = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (110, 110, 110)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:  # no DejaVu on this machine: Pillow's built-in font
        return ImageFont.load_default(size)


def to_cell(image: torch.Tensor) -> Image.Image:
    """One ``[3, 16, 16]`` image in [-1, 1] as a CELL x CELL picture, pixels kept sharp."""
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((CELL, CELL), Image.NEAREST)


def rfg_label(c: float) -> str:
    text = f"c = {c:g}".replace("-", "\u2212")
    return f"{text} (plain)" if c == 0 else text


def generate(pipe: Pipeline) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """The reference image and, per c, the row images ``[len(ROW_SEEDS), 3, 16, 16]``."""
    shapes = [REFERENCE_SHAPE] * len(ROW_SEEDS)
    with tempfile.TemporaryDirectory() as tmp:
        store = ReferenceStore(Path(tmp))
        reference = pipe.save_reference(store, REFERENCE_NAME, REFERENCE_SHAPE, REFERENCE_SEED)
        sweep = {c: (pipe.generate(shapes, list(ROW_SEEDS)) if c == 0
                     else pipe.use_reference(store, REFERENCE_NAME, c, shapes, list(ROW_SEEDS)))
                 for c in RFGS}
    return reference, sweep


def compose(reference: torch.Tensor, sweep: dict[float, torch.Tensor]) -> Image.Image:
    """The labelled grid: seed labels, the reference, then one column per c."""
    step = CELL + GAP
    sweep_x = LABEL_W + step + SEPARATOR
    width = sweep_x + len(RFGS) * step
    height = HEADER_H + len(ROW_SEEDS) * step + FOOTER_H
    grid = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(grid)
    head, small = font(14), font(12)

    def header(x: int, text: str) -> None:
        draw.text((x + CELL / 2, HEADER_H / 2), text, font=head, fill=INK, anchor="mm")

    header(LABEL_W, "reference")
    for col, c in enumerate(RFGS):
        header(sweep_x + col * step, rfg_label(c))
    ref_cell = to_cell(reference)
    for row, seed in enumerate(ROW_SEEDS):
        y = HEADER_H + row * step
        draw.text((LABEL_W - 10, y + CELL / 2), f"seed {seed}", font=head, fill=INK, anchor="rm")
        grid.paste(ref_cell, (LABEL_W, y))
        for col, c in enumerate(RFGS):
            grid.paste(to_cell(sweep[c][row]), (sweep_x + col * step, y))
    line_x = LABEL_W + step + SEPARATOR // 2 - GAP // 2
    draw.line([(line_x, HEADER_H), (line_x, HEADER_H + len(ROW_SEEDS) * step - GAP)], fill=MUTED, width=1)
    notes = (f"Toy model (16\u00d716 pixels): not Stable Diffusion, not a WebUI host. RefDrop Use of one reference "
             f"(seed {REFERENCE_SEED}),", f"prompt \u201c{REFERENCE_SHAPE}\u201d for every image, euler 12 steps, "
             f"CFG 3. Made by tools/toy_sweep.py.")
    for i, note in enumerate(notes):
        draw.text((width / 2, height - FOOTER_H + 4 + i * 16), note, font=small, fill=MUTED, anchor="mt")
    return grid


def describe(reference: torch.Tensor, sweep: dict[float, torch.Tensor]) -> None:
    """Print what the classifier reads from every picture, to check the grid against."""
    look = classify(reference)
    print(f"reference: {look.colour} {look.shape} on {look.background}")
    for row, seed in enumerate(ROW_SEEDS):
        cells = []
        for c in RFGS:
            a = classify(sweep[c][row])
            cells.append(f"{c:g}:{a.colour}/{a.background}")
        print(f"seed {seed}: " + "  ".join(cells))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the picture (default: %(default)s)")
    out = parser.parse_args(argv).out
    torch.set_num_threads(1)
    started = time.monotonic()
    pipe = Pipeline.load(MODEL)
    reference, sweep = generate(pipe)
    describe(reference, sweep)
    out.parent.mkdir(parents=True, exist_ok=True)
    compose(reference, sweep).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB) in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
