"""Names of DiT blocks as RefDrop addresses them: ``double3.0`` (double-stream block 3), ``single12.0``; a
block by its name: its width, and (Flux, Chroma) its projection of a stored input.

RefDrop keys a layer by ``extra_options["block"]`` and ``block_index`` (``reference/address.py`` ``layer_id``); a
DiT block has one attention of its image tokens, so its index is always 0. Flux and Chroma have both kinds;
Qwen-Image's blocks are double-stream, Wan's single-stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from ..errors import RefDropError
from .blocks import FluxOps, double_image_kv, single_image_kv

DOUBLE = "double"
SINGLE = "single"
_BLOCK_ID = re.compile(rf"^({DOUBLE}|{SINGLE})(\d{{1,3}})\.0$")


# where each kind of block is in each DiT model: Flux's and Chroma's two lists, Qwen-Image's (double-stream) and
# Wan's (single-stream) one
_BLOCK_LISTS = {DOUBLE: ("double_blocks", "transformer_blocks"), SINGLE: ("single_blocks", "blocks")}


def _block(model, lid: str):
    """``(kind, block)`` of the block id ``lid`` in ``model``, None where it has no such block."""
    match = _BLOCK_ID.match(lid)
    blocks = next((getattr(model, name) for name in _BLOCK_LISTS[match[1]] if hasattr(model, name)), None) \
        if match else None
    if blocks is None or int(match[2]) >= len(blocks):
        return None
    return match[1], blocks[int(match[2])]


def layer_widths_of(model):
    """Block id -> the width of that block's image-token attention in the DiT ``model`` (its hidden size: heads ×
    head size), None where it has no such block: a Use checks a reference's layers against it before reading any
    slot."""

    def width(lid: str) -> int | None:
        found = _block(model, lid)
        if found is None:
            return None
        block = found[1]
        return int(getattr(block, "hidden_size", None) or block.dim)  # Flux's and Chroma's, or Qwen-Image's and Wan's

    return width


def projections_of(model, ops):
    """Block id -> the K and V projection of a stored image-token input by that block of the Flux or Chroma
    ``model``, computed with the block's own modules and the host's ``ops`` (``blocks.double_image_kv``): the
    ``Projections`` (attn/sources.py) a reference that keeps each block's input is used with. Looked up once per
    block. None for Qwen-Image and Wan (no Flux block lists): no input-keeping profile works there yet."""
    if not (isinstance(ops, FluxOps) and hasattr(model, "double_blocks") and hasattr(model, "single_blocks")):
        return None
    found: dict[str, Callable] = {}

    def projections(lid: str) -> Callable:
        if lid not in found:
            kind_block = _block(model, lid)
            if kind_block is None:
                raise RefDropError(f"RefDrop: the current model has no transformer block {lid}")
            kind, block = kind_block
            image_kv = double_image_kv if kind == DOUBLE else single_image_kv
            found[lid] = partial(image_kv, block, ops=ops)
        return found[lid]

    return projections


def block_options(call_options: dict, kind: str, index: int, n_heads: int, dim_head: int) -> dict:
    """The ``extra_options`` of one block's attention call, shaped like a U-Net attn1 call's: the sampler's
    ``transformer_options`` of this model call (``cond_or_uncond``, ``sigmas``, a reference pass's key) with the
    block's address and head layout."""
    return {**call_options, "block": (kind, int(index)), "block_index": 0, "n_heads": int(n_heads),
            "dim_head": int(dim_head)}

