"""Names of Flux and Chroma blocks as RefDrop addresses them: ``double3.0`` (double-stream block 3), ``single12.0``;
a block by its name: its width, and its projection of a stored input.

RefDrop keys a layer by ``extra_options["block"]`` and ``block_index`` (``reference/address.py`` ``layer_id``); a
Flux or Chroma block has one joint attention, so its index is always 0.
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


def _block(model, lid: str):
    """``(kind, block)`` of the block id ``lid`` in ``model``, None where it has no such block."""
    match = _BLOCK_ID.match(lid)
    blocks = getattr(model, f"{match[1]}_blocks", None) if match else None
    if blocks is None or int(match[2]) >= len(blocks):
        return None
    return match[1], blocks[int(match[2])]


def layer_widths_of(model):
    """Block id -> the width of that block's joint attention in the Flux or Chroma ``model`` (its hidden size:
    heads × head size), None where it has no such block: a Use checks a reference's layers against it before reading
    any slot."""

    def width(lid: str) -> int | None:
        found = _block(model, lid)
        return None if found is None else int(found[1].hidden_size)

    return width


def projections_of(model, ops: FluxOps):
    """Block id -> the K and V projection of a stored image-token input by that block of the Flux or Chroma
    ``model``, computed with the block's own modules and the host's ``ops`` (``blocks.double_image_kv``): the
    ``Projections`` (attn/sources.py) a reference that keeps each block's input is used with. Looked up once per
    block."""
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

