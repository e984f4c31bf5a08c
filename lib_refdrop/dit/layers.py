"""Names of DiT blocks as RefDrop addresses them: ``double3.0`` (double-stream block 3), ``single12.0``.

RefDrop keys a layer by ``extra_options["block"]`` and ``block_index`` (``reference/address.py`` ``layer_id``); a
DiT block has one attention of its image tokens, so its index is always 0. Flux and Chroma have both kinds;
Qwen-Image's blocks are double-stream, Wan's single-stream.
"""

from __future__ import annotations

import re

DOUBLE = "double"
SINGLE = "single"
_BLOCK_ID = re.compile(rf"^({DOUBLE}|{SINGLE})(\d{{1,3}})\.0$")


# where each kind of block is in each DiT model: Flux's and Chroma's two lists, Qwen-Image's (double-stream) and
# Wan's (single-stream) one
_BLOCK_LISTS = {DOUBLE: ("double_blocks", "transformer_blocks"), SINGLE: ("single_blocks", "blocks")}


def layer_widths_of(model):
    """Block id -> the width of that block's image-token attention in the DiT ``model`` (its hidden size: heads ×
    head size), None where it has no such block: a Use checks a reference's layers against it before reading any
    slot."""

    def width(lid: str) -> int | None:
        match = _BLOCK_ID.match(lid)
        if not match:
            return None
        blocks = next((getattr(model, name) for name in _BLOCK_LISTS[match[1]] if hasattr(model, name)), None)
        if blocks is None or int(match[2]) >= len(blocks):
            return None
        block = blocks[int(match[2])]
        return int(getattr(block, "hidden_size", None) or block.dim)  # Flux's and Chroma's, or Qwen-Image's and Wan's

    return width


def block_options(call_options: dict, kind: str, index: int, n_heads: int, dim_head: int) -> dict:
    """The ``extra_options`` of one block's attention call, shaped like a U-Net attn1 call's: the sampler's
    ``transformer_options`` of this model call (``cond_or_uncond``, ``sigmas``, a reference pass's key) with the
    block's address and head layout."""
    return {**call_options, "block": (kind, int(index)), "block_index": 0, "n_heads": int(n_heads),
            "dim_head": int(dim_head)}

