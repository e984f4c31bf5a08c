"""The Wan (2.1, 2.2) transformer block computed from its own modules, with its self-attention handed to RefDrop's
patch; written from the public Wan design (Wan-Video/Wan2.1 ``wan/modules/model.py``, ``WanAttentionBlock``).

A Wan block is single-stream: the video's tokens (frames x rows x columns of 2x2 patches; one frame for a picture)
attend to themselves, then to the text by cross-attention, then pass an MLP. Its self-attention is a U-Net attn1 in
all but name: q and k are RMS-normed over the whole width and roped (3 axes: frame, row, column), and no text token
takes part, so eq. 15 is RefDrop's attn1 patch itself, with the image tokens' own attention as ``inner``. The text,
and in the image-to-video models with CLIP-vision features (Wan 2.1 I2V / FLF) those features, reach the tokens only
through the cross-attention, which RefDrop leaves as it is.

The block is modulated by the timestep: six vectors (shift, scale, gate before the self-attention and before the
MLP) are the block's ``modulation`` parameter plus the model's projection of the timestep embedding, ``e``:
``[B, 6, dim]``, ``[B, 1, 6, dim]``, or with one row per run of tokens ``[B, n, 6, dim]`` (Wan 2.2 5B's per-frame
timesteps, each row stretched over its run of tokens).

The hosts differ in the arithmetic (``WanOps``): ComfyUI (since 2025-08-23) modulates and adds the gated residuals
with ``addcmul`` and ropes with its ``apply_rope1``; Forge Neo and reForge use ``*`` and ``+``, Neo comfy_kitchen's
``apply_rope1`` and reForge the design's RoPE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .blocks import apply_rope, gated_add, modulate

# (q, k, v) [B, L, heads * head_dim] (q and k roped) -> [B, L, heads * head_dim]: the self-attention of one block
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class WanOps:
    """What a host does its own way inside a Wan block (the defaults: reForge's, the design's)."""

    modulate: Callable = modulate    # (x, shift, scale) -> (1 + scale) * x + shift
    gated_add: Callable = gated_add  # (x, gate, y) -> x + gate * y: the residual after self-attention and MLP
    rope: Callable = apply_rope      # (q, k, freqs) -> (q, k) roped, [B, L, heads, head_dim]
    # whether the host's block hands the model call's transformer_options to its cross-attention (ComfyUI 0.3.6x),
    # where an attention override another node installed applies
    cross_options: bool = False


def modulations(block, e: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """The block's six modulation vectors, each stretched over the tokens of ``x``."""
    own = block.modulation.to(dtype=x.dtype, device=x.device)
    parts = (own + e).chunk(6, dim=1) if e.ndim < 4 else (own.unsqueeze(0) + e).unbind(2)
    return [_over_tokens(part, x.shape[1]) for part in parts]


def _over_tokens(m: torch.Tensor, tokens: int) -> torch.Tensor:
    """``m`` ``[B, n, dim]``: one row for all tokens, one per token, or one per run of ``ceil(tokens / n)``."""
    rows = m.shape[1]
    if rows <= 1 or rows == tokens:
        return m
    return m.repeat_interleave(-(-tokens // rows), dim=1)[:, :tokens]


def self_attention(attn, x, freqs, ops: WanOps, attend: Attend) -> torch.Tensor:
    """The block's self-attention ``attn`` on its modulated input ``x``, the attention itself by ``attend``."""
    b, length = x.shape[:2]
    heads = attn.num_heads
    q = attn.norm_q(attn.q(x)).view(b, length, heads, -1)
    k = attn.norm_k(attn.k(x)).view(b, length, heads, -1)
    q, k = ops.rope(q, k, freqs)
    return attn.o(attend(q.reshape(b, length, -1), k.reshape(b, length, -1), attn.v(x).view(b, length, -1)))


def wan_block(block, x, e, freqs, context, context_img_len: int | None, ops: WanOps, attend: Attend,
              transformer_options: dict | None = None) -> torch.Tensor:
    """One Wan block: the tokens out. ``context``: the text tokens (after the CLIP-vision ones, ``context_img_len`` of
    them, where the model has them); ``transformer_options``: what the host handed the block."""
    shift1, scale1, gate1, shift2, scale2, gate2 = modulations(block, e, x)
    x = ops.gated_add(x, gate1, self_attention(block.self_attn, ops.modulate(block.norm1(x), shift1, scale1), freqs,
                                               ops, attend))
    options = {"transformer_options": transformer_options} if ops.cross_options and transformer_options else {}
    x = x + block.cross_attn(block.norm3(x), context, context_img_len=context_img_len, **options)
    return ops.gated_add(x, gate2, block.ffn(ops.modulate(block.norm2(x), shift2, scale2)))
