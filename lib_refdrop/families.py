"""Model families: a reference only fits models whose attention layers have the same addresses and widths.

The host tells the family of its model (``webui/hosts/host.py`` ``family_of``; a Flux model is recognised by its
blocks, ``patcher/dit_blocks.py``); these are their names and the check. A U-Net reference holds attn1 layers
(``input4.1``), a Flux one the image tokens of its transformer blocks (``double3.0``, ``single12.0``): neither fits
the other.
"""

from __future__ import annotations

LABELS = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux",
          "unknown": "an unknown architecture"}
DIT_FAMILIES = ("flux",)  # transformer (DiT) models: RefDrop works in their joint attention (lib_refdrop/dit)


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
