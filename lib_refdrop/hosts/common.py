"""What every host adapter shares: the sigma schedule lookup and installing one attn1 patch with chaining.

Both hosts keep ComfyUI's ``model_options["transformer_options"]["patches_replace"]["attn1"]`` dict and look a
layer up by ``(block_name, number, block_index)`` first, then ``(block_name, number)`` (host-api.md §2.4).
``set_model_replace_all`` overwrites every 3-tuple key, so a patch another extension registered before RefDrop
would silently stop working; ``make_inner`` keeps calling it underneath RefDrop instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

Attention = Callable  # (q, k, v, extra_options) -> out


def importable(module: str) -> bool:
    """Whether ``module`` exists in this process (how an adapter recognises its host), without importing it."""
    if module in sys.modules:  # also a stand-in module, whose __spec__ may be None
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def percent_to_sigma(unet, percent: float) -> float:
    """The sigma at ``percent`` of the schedule: Forge keeps it on ``model.predictor``, reForge on
    ``model.model_sampling`` (duck-typed, so either host's object works here)."""
    model = unet.model
    sampling = getattr(model, "predictor", None)
    if sampling is None:
        sampling = getattr(model, "model_sampling", None)
    if sampling is None or not hasattr(sampling, "percent_to_sigma"):
        raise AttributeError("the U-Net has neither model.predictor nor model.model_sampling with percent_to_sigma")
    return float(sampling.percent_to_sigma(float(percent)))


def earlier_attn1_patches(unet) -> dict:
    """A snapshot of the attn1 replace patches already registered on ``unet`` (by another extension)."""
    options = getattr(unet, "model_options", None) or {}
    replace = options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    return dict(replace)


def make_inner(earlier: dict, attention: Attention) -> Attention:
    """What attn1 computes without RefDrop: the earlier patch registered for this layer, else host attention."""
    if not earlier:
        return attention

    def inner(q, k, v, extra_options):
        block = extra_options.get("block")
        patch = None
        if block is not None:
            key = (block[0], block[1])
            patch = earlier.get((*key, extra_options.get("block_index", 0))) or earlier.get(key)
        if patch is None:
            return attention(q, k, v, extra_options)
        return patch(q, k, v, extra_options)

    return inner


def install(unet, patch):
    """A clone of ``unet`` with ``patch`` (one closure) on every attn1 layer; ``unet`` itself is unchanged."""
    patched = unet.clone()
    patched.set_model_replace_all(patch, "attn1")
    return patched
