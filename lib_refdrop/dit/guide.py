"""Eq. 15: the image tokens of each DiT block's attention get the attn1-style patch (``attn/patches.py``) that RefDrop
uses on a U-Net, the text tokens nothing: in the joint attention of a Flux, Chroma or Qwen-Image block, in the
self-attention of a Wan block (which no text token takes part in: there the patch is the attention itself).

    X'_img <- X'_img + (patch(Q_img, K_img, V_img) - Attn(Q_img, K_img, V_img))

``X'`` is the block's joint attention as the model computes it; ``patch`` is the Save, Use or failing patch of
the run (its ``inner`` is ``FluxRefDrop.inner``: the image tokens' own attention ``Attn(Q_img, K_img, V_img)``,
computed once and kept for the difference). A Use blends ``own + sum_j c_j (Attn(Q_img, K_ref_j, V_ref_j) - own)``,
so the difference is the paper's ``c * (Attn_ref - Attn_img)``; where the patch returns ``own`` itself (a Save,
a sigma or block the Use leaves out, a reference pass) the block is exactly the model's. Q and K are the roped ones:
a reference's keys keep the positions they were computed at.

A Save that keeps each block's input (``lean``) records through the run's input patch, as on a U-Net's attn1 layer,
what the block's ``qkv`` / ``linear1`` project for the image tokens, and their RoPE rows, which a Use projects again
(``blocks.double_image_kv``): the modulation is in that input already.

The blocks do not receive the sampler's ``transformer_options`` (Forge and reForge do not pass them to a block), so
a model function wrapper (``model_function``) keeps the options of the model call in progress for them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..attn.patches import POSITIONS_OPTION, InputPatch
from ..errors import RefDropInternalError
from .blocks import FluxOps, double_block, single_block, to_patch_layout
from .layers import DOUBLE, SINGLE, block_options
from .qwen import qwen_block
from .wan import WanOps, wan_block


class FluxRefDrop:
    """The run's patch on every block of one DiT model (Flux, Chroma, Qwen-Image, Wan) for one sampling pass.

    ``attention``: ``(q, k, v, extra_options) -> out`` in the attn1 patch layout, the host's kernel (the same one for a
    block's own image attention and for the reference's, so a reference that equals the image gives a zero
    difference, bit for bit; Qwen-Image's and Wan's blocks call it as their own attention too). ``ops``: the host's
    arithmetic inside the blocks (``FluxOps``; ``WanOps`` for Wan; Qwen-Image's needs none). ``own_needed``: False for
    a Save, whose patch only records and returns what ``inner`` gave; ``inner`` then computes nothing.
    ``input_patch``: a Save that keeps each block's input (``make_input_save_patch``; Flux and Chroma), called with
    the image tokens' attention input as ``(x, x, x, extra_options)``, their RoPE rows in
    ``extra_options[POSITIONS_OPTION]``.
    """

    def __init__(self, patch: Callable, attention: Callable, ops: FluxOps | WanOps | None, own_needed: bool = True,
                 input_patch: InputPatch | None = None):
        self.patch = patch
        self.attention = attention
        self.ops = ops
        self.own_needed = own_needed
        self.input_patch = input_patch
        self._calls: list[dict] = []     # transformer_options of the model calls in progress (innermost last)
        self._text_tokens: list[int | None] = []
        # of each call: how many CLIP-vision tokens head a Wan model's context (its ``clip_fea``), None where none
        self._clip_tokens: list[int | None] = []
        self._own: torch.Tensor | None = None

    # -- the model call in progress -------------------------------------------------------------------------------

    def model_function(self, run_wrapper: Callable | None = None) -> Callable:
        """A model function wrapper ``(apply_model, args)`` that keeps each model call's ``transformer_options``
        for the blocks, inside ``run_wrapper`` (the run's, for a reference pass) so its own calls are kept too."""

        def refdrop_flux_calls(apply_model, args):
            def apply(x, t, **c):
                self._calls.append(c.get("transformer_options") or {})
                self._text_tokens.append(None)
                clip = c.get("clip_fea")  # the model takes ``clip_fea.shape[-2]``; the block hook does not pass it
                self._clip_tokens.append(int(clip.shape[-2]) if clip is not None else None)
                try:
                    return apply_model(x, t, **c)
                finally:
                    self._calls.pop()
                    self._text_tokens.pop()
                    self._clip_tokens.pop()

            if run_wrapper is None:
                return apply(args["input"], args["timestep"], **args["c"])
            return run_wrapper(apply, args)

        return refdrop_flux_calls

    def _options(self) -> dict:
        if not self._calls:
            raise RefDropInternalError("RefDrop: a DiT block ran outside the sampler's model function")
        return self._calls[-1]

    # -- the blocks ------------------------------------------------------------------------------------------------

    def double(self, block, index: int, img, txt, vec, pe, attn_mask=None):
        options = self._options()
        self._text_tokens[-1] = int(txt.shape[1])
        guide = self._guide(DOUBLE, index, block.num_heads, options)
        return double_block(block, img, txt, vec, pe, attn_mask, self.ops, guide)

    def single(self, block, index: int, x, vec, pe, attn_mask=None):
        options = self._options()
        text_tokens = self._text_tokens[-1]
        if text_tokens is None:
            raise RefDropInternalError("RefDrop: a DiT single-stream block ran before the double-stream blocks")
        guide = self._guide(SINGLE, index, block.num_heads, options)
        return single_block(block, x, vec, pe, attn_mask, text_tokens, self.ops, guide)

    def qwen(self, block, index: int, img, txt, temb, pe):
        """One Qwen-Image block (double-stream, ``dit/qwen.py``): ``(img, txt)`` out."""
        options = self._options()
        heads = block.attn.heads
        extra = block_options(options, DOUBLE, index, heads, block.attn.dim_head)
        return qwen_block(block, img, txt, temb, pe, lambda q, k, v: self.attention(q, k, v, extra),
                          self._guide(DOUBLE, index, heads, options))

    def wan(self, block, index: int, x, context, e, freqs, transformer_options: dict | None = None):
        """One Wan block (single-stream, ``dit/wan.py``): the tokens out; its self-attention is the patch."""
        options = self._options()
        extra = block_options(options, SINGLE, index, block.num_heads, block.dim // block.num_heads)
        return wan_block(block, x, e, freqs, context, self._clip_tokens[-1], self.ops, self._attend(extra),
                         transformer_options)

    def inner(self, q, k, v, extra_options):
        """What the patch sees as the layer's own attention: the image tokens attending to themselves."""
        self._own = self.attention(q, k, v, extra_options) if self.own_needed else q
        return self._own

    def _attend(self, extra: dict):
        """A Wan block's self-attention: the patch, whose ``inner`` is the attention itself. A Save's ``inner``
        computes nothing (``own_needed``), so its block attends here, with the same kernel."""

        def attend(q, k, v):
            self._own = None
            out = self.patch(q, k, v, extra)
            own, self._own = self._own, None
            if out is own and not self.own_needed:
                return self.attention(q, k, v, extra)
            return out

        return attend

    def _guide(self, kind: str, index: int, heads: int, options: dict):
        def guide(attn_img, q_img, k_img, v_img, x_img=None, pe_img=None):
            extra = block_options(options, kind, index, heads, q_img.shape[-1])
            if self.input_patch is not None:  # the rows of a call share one pe: the first row's
                positions = None if pe_img is None else pe_img[0, 0]
                self.input_patch(x_img, x_img, x_img, {**extra, POSITIONS_OPTION: positions})
            q, k, v = to_patch_layout(q_img), to_patch_layout(k_img), to_patch_layout(v_img)
            self._own = None
            out = self.patch(q, k, v, extra)
            own, self._own = self._own, None
            if out is own:
                return attn_img  # RefDrop changes nothing here: the model's own block, exactly
            if own is None or not self.own_needed:
                own = self.attention(q, k, v, extra)
            return attn_img + (out - own).to(attn_img.dtype)

        return guide
