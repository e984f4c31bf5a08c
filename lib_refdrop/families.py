"""Model families: a reference only fits models whose attn1 layers have the same addresses and widths."""

from __future__ import annotations

LABELS = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "unknown": "an unknown architecture"}


def family_of(sd_model) -> str:
    """The family of a WebUI model object from the flags both hosts set on ``p.sd_model``."""
    for flag, family in (("is_sdxl", "sdxl"), ("is_sd3", "sd3"), ("is_sd2", "sd2"), ("is_sd1", "sd15")):
        if getattr(sd_model, flag, False) is True:
            return family
    return "unknown"


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
