"""A subject mask lands on the reference's tokens whatever its own aspect ratio (issue 18, item 5).

A mask is cut to the picture the reference's tokens come from exactly as an image is cut to a pass (the hosts'
"Crop and resize", lib_refdrop/crop.py), and mapped to the token grid of that picture's aspect ratio, never of the
mask's own. On the trained toy model driven like the hosts drive a U-Net, with the hosts' image encoder (crop,
then encode). The same on a stored reference of the trained character model: tests/test_charmodel.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from devmodel.pipeline import Pipeline, from_pil, to_pil
from devmodel.sampling import SCHEDULE
from devmodel.toy import MODEL
from devmodel.toy.data import SIZE
from lib_refdrop.attn.masks import KeyMask, mask_tensor
from lib_refdrop.diffusers import attention
from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.standalone import context, start_save, start_use
from lib_refdrop.webui.hosts.image_pass import crop_to_size

SHAPES = ["circle", "square", "triangle"]
SEEDS = [1, 2, 3]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(MODEL)


def white_columns(width: int, height: int, start: int, stop: int) -> Image.Image:
    """A ``width`` x ``height`` mask, white on columns ``start`` .. ``stop - 1``."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, start:stop] = 255
    return Image.fromarray(pixels, mode="L")


def top_half(size: int = SIZE) -> Image.Image:
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[: size // 2] = 255
    return Image.fromarray(pixels, mode="L")


def host_context(pipe, seed: int, **extra):
    """A pass whose image encoder crops to the generation's size before it encodes, as the hosts' does."""
    return context(MODEL.name, attention, SCHEDULE.percent_to_sigma, seed=seed,
                   encode_image=lambda image: from_pil(crop_to_size(image, SIZE, SIZE), SIZE),
                   encode_prompt=lambda text: {"c_crossattn": pipe.prompts.of(text or None)}, **extra)


def used(pipe, store, batches=((SHAPES, SEEDS),), ctx_extra=None, **settings) -> list[torch.Tensor]:
    out = []
    with start_use(store, **settings) as use:
        for index, (shapes, seeds) in enumerate(batches):
            extra = {"batch_index": index, "batch_count": len(batches), **(ctx_extra or {})}
            patches = use.for_pass(host_context(pipe, seeds[0], **extra))
            out.append(pipe.generate(list(shapes), list(seeds), patches))
    return out


def test_the_token_grid_is_the_references_not_the_masks():
    """A square left-half mask on a reference of aspect 2 keeps the left columns of its 4 x 8 grid."""
    left = KeyMask(mask_tensor(white_columns(16, 16, 0, 8)), aspect=2.0)
    assert left.kept_tokens(32).tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
    assert KeyMask(mask_tensor(white_columns(16, 16, 0, 8)), aspect=1.0).kept_tokens(16).tolist() == [
        0, 1, 4, 5, 8, 9, 12, 13]


def test_a_wide_image_and_its_mask_are_cut_alike(pipe, tmp_path):
    """A 2:1 image whose centre square is the picture, with a mask on the left half of that square: the image is
    cut to the square generation and its mask by the same box, so the Use is the square picture's with a square
    left-half mask, bit for bit (b9bbab8 read the 2:1 mask on grids of its own shape: every other row)."""
    store = ReferenceStore(tmp_path)
    square = to_pil(pipe.generate(["square"], [10_001])[0], scale=1)
    wide = Image.new("RGB", (2 * SIZE, SIZE), "black")
    wide.paste(square, (SIZE // 2, 0))
    wide_mask = white_columns(2 * SIZE, SIZE, SIZE // 2, SIZE)   # the left half of the centre square
    from_wide, = used(pipe, store, source="image", image=wide, mask=wide_mask, rfg=0.6)
    from_square, = used(pipe, store, source="image", image=square, mask=white_columns(SIZE, SIZE, 0, SIZE // 2),
                        rfg=0.6)
    top, = used(pipe, store, source="image", image=square, mask=top_half(), rfg=0.6)
    assert torch.equal(from_wide, from_square)
    assert not torch.equal(from_square, top)


def test_an_image_slots_mask_of_another_aspect_is_refused(pipe, tmp_path):
    store = ReferenceStore(tmp_path)
    square = to_pil(pipe.generate(["square"], [10_001])[0], scale=1)
    with start_use(store, source="batch", rfg=0.0, source_2="image", image_2=square, rfg_2=0.4,
                   mask_2=white_columns(2 * SIZE, SIZE, 0, SIZE)) as use:
        with pytest.raises(RefDropError, match=rf"the mask of slot 2 is {2 * SIZE}×{SIZE} pixels but its image is "
                                               rf"{SIZE}×{SIZE}"):
            use.for_pass(host_context(pipe, 1))


def test_the_batch_images_mask_is_cut_to_the_generations_aspect(pipe, tmp_path):
    """The batch's first image has the generation's size: a 2:1 mask is cut to its centre square like an image."""
    store = ReferenceStore(tmp_path)
    batches = ((["circle"], [7]), (["square", "triangle"], [8, 9]))
    size = {"size": (SIZE, SIZE)}
    _, wide = used(pipe, store, batches, size, source="batch", rfg=0.6,
                   mask=white_columns(2 * SIZE, SIZE, SIZE // 2, SIZE))
    _, square = used(pipe, store, batches, size, source="batch", rfg=0.6, mask=white_columns(SIZE, SIZE, 0, SIZE // 2))
    _, top = used(pipe, store, batches, size, source="batch", rfg=0.6, mask=top_half())
    assert torch.equal(wide, square) and not torch.equal(square, top)


def test_a_save_records_the_size_its_context_gives(pipe, tmp_path):
    """What a later Use cuts a mask to, where the caller's generation record lacks the size."""
    store = ReferenceStore(tmp_path)
    ctx = context(MODEL.name, attention, SCHEDULE.percent_to_sigma, seed=4, size=(SIZE, SIZE))
    with start_save(store, "sized", ctx) as save:
        pipe.generate(["circle"], [4], save.patches)
        save.finish({"seed": 4})
    generation = store.manifest("sized")["generation"]
    assert (generation["width"], generation["height"], generation["seed"]) == (SIZE, SIZE, 4)
