"""Model families: a reference only fits models whose attention layers have the same addresses and widths.

The host tells the family of its model (``webui/hosts/host.py`` ``family_of``; a DiT model (Flux, Chroma,
Qwen-Image, Wan) is recognised by its class and blocks, ``patcher/dit_blocks.py``); these are their names and the
check. A U-Net reference holds attn1 layers (``input4.1``), a DiT one the image tokens of its transformer blocks
(``double3.0``, ``single12.0``): neither fits the other, and DiT families whose blocks have the same names and widths
(Flux and Chroma) are different models.
"""

from __future__ import annotations

from dataclasses import dataclass

LABELS = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux", "chroma": "Chroma",
          "qwen_image": "Qwen-Image", "wan": "Wan", "unknown": "an unknown architecture"}
# transformer (DiT) models: RefDrop works in the attention of their image tokens (lib_refdrop/dit)
DIT_FAMILIES = ("flux", "chroma", "qwen_image", "wan")


@dataclass(frozen=True)
class BlockKind:
    """One kind of block that holds attention: its group (a layer id's head, ``input4.1``, and a choice of Disabled
    block groups), the prefix of its name in block-weight tools (``IN04``) and the highest number any supported model
    has."""

    group: str
    prefix: str
    last: int


# The one table of block kinds, in the order blocks are listed: U-Net input / middle / output; DiT double-stream
# (separate text and image weights: Flux's, Chroma's, Qwen-Image's 60) and single-stream (one stream of tokens:
# Flux's and Chroma's, Wan's 40). Layer ids, block names, groups and their checks are all made from it.
BLOCK_KINDS = (
    BlockKind("input", "IN", 11), BlockKind("middle", "M", 0), BlockKind("output", "OUT", 11),
    BlockKind("double", "D", 59), BlockKind("single", "S", 39),
)


def _blocks(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02d}" for i in range(count))


# The blocks with attention in each family's models, by their names in block-weight tools. Chroma keeps Flux's 19
# double- and 38 single-stream blocks; Qwen-Image has 60 double-stream blocks; Wan 40 (14B) or 30 (1.3B, 2.2 5B).
_FLUX_BLOCKS = (*_blocks("D", 19), *_blocks("S", 38))
FAMILY_BLOCKS = {
    "sd15": ("IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *_blocks("OUT", 12)[3:]),
    "sdxl": ("IN04", "IN05", "IN07", "IN08", "M00", *_blocks("OUT", 6)),
    "flux": _FLUX_BLOCKS,
    "chroma": _FLUX_BLOCKS,
    "qwen_image": _blocks("D", 60),
    "wan": _blocks("S", 40),
}


def label(family: str) -> str:
    return LABELS.get(family, family)


def _with_article(family: str) -> str:
    """"an SD1.5 model", "a Flux model": the article as the label is spoken."""
    if family == "unknown":
        return "an unknown"
    name = label(family)
    return f"{'an' if name[:1] in 'AEIOSU' else 'a'} {name}"


def mismatch(reference: str, saved: str, current: str) -> str | None:
    """A message if a reference of family ``saved`` cannot be used with a model of family ``current``."""
    if saved == current:
        return None
    if "unknown" in (saved, current) and not {saved, current} & set(DIT_FAMILIES):
        return None  # unknown U-Net families are checked layer by layer instead
    return (
        f"RefDrop: reference '{reference}' was saved with {_with_article(saved)} model, but the current model is "
        f"{label(current)}. Use a reference saved with {_with_article(current)} model (or switch the model)."
    )
