"""Names of Flux blocks as the engine addresses them: ``double3.0`` (double-stream block 3), ``single12.0``.

The engine keys a layer by ``extra_options["block"]`` and ``block_index`` (``attn/address.py`` ``layer_id``); a
Flux block has one joint attention, so its index is always 0.
"""

from __future__ import annotations

DOUBLE = "double"
SINGLE = "single"


def block_options(call_options: dict, kind: str, index: int, n_heads: int, dim_head: int) -> dict:
    """The ``extra_options`` of one block's attention call, shaped like a U-Net attn1 call's: the sampler's
    ``transformer_options`` of this model call (``cond_or_uncond``, ``sigmas``, a reference pass's key) with the
    block's address and head layout."""
    return {**call_options, "block": (kind, int(index)), "block_index": 0, "n_heads": int(n_heads),
            "dim_head": int(dim_head)}

