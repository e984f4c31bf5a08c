"""Model families: a reference only fits models whose attn1 layers have the same addresses and widths.

The host tells the family of its model (``webui/hosts/host.py`` ``family_of``); these are their names and the check.
"""

from __future__ import annotations

LABELS = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "unknown": "an unknown architecture"}


def label(family: str) -> str:
    return LABELS.get(family, family)


def mismatch(reference: str, saved: str, current: str) -> str | None:
    """A message if a reference of family ``saved`` cannot be used with a model of family ``current``."""
    if saved == current or "unknown" in (saved, current):
        return None  # unknown families are checked layer by layer instead
    return (
        f"RefDrop: reference '{reference}' was saved with an {label(saved)} model, but the current model is "
        f"{label(current)}. Use a reference saved with an {label(current)} model (or switch the model)."
    )
