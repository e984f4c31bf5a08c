"""Names of Flux and Chroma blocks as RefDrop addresses them: ``double3.0`` (double-stream block 3), ``single12.0``.

RefDrop keys a layer by ``extra_options["block"]`` and ``block_index`` (``reference/address.py`` ``layer_id``); a
Flux or Chroma block has one joint attention, so its index is always 0.
"""

from __future__ import annotations

import re

DOUBLE = "double"
SINGLE = "single"
_BLOCK_ID = re.compile(rf"^({DOUBLE}|{SINGLE})(\d{{1,3}})\.0$")


def layer_widths_of(model):
    """Block id -> the width of that block's joint attention in the Flux or Chroma ``model`` (its hidden size:
    heads × head size), None where it has no such block: a Use checks a reference's layers against it before reading
    any slot."""

    def width(lid: str) -> int | None:
        match = _BLOCK_ID.match(lid)
        blocks = getattr(model, f"{match[1]}_blocks", None) if match else None
        if blocks is None or int(match[2]) >= len(blocks):
            return None
        return int(blocks[int(match[2])].hidden_size)

    return width


def block_options(call_options: dict, kind: str, index: int, n_heads: int, dim_head: int) -> dict:
    """The ``extra_options`` of one block's attention call, shaped like a U-Net attn1 call's: the sampler's
    ``transformer_options`` of this model call (``cond_or_uncond``, ``sigmas``, a reference pass's key) with the
    block's address and head layout."""
    return {**call_options, "block": (kind, int(index)), "block_index": 0, "n_heads": int(n_heads),
            "dim_head": int(dim_head)}

