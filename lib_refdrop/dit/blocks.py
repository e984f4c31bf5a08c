"""The two transformer blocks of Flux and Chroma computed from their own modules, with the joint attention's image rows
handed to a guide (eq. 15); written from the public Flux design (black-forest-labs/flux, ``DoubleStreamBlock`` and
``SingleStreamBlock``) and Chroma's (lodestones' model: the same blocks without their modulation layers).

A double-stream block keeps separate weights for text and image tokens and attends over both jointly; a
single-stream block runs on the concatenation ``[txt; img]``. In both, each token stream is modulated (shift, scale,
gate), q and k are RMS-normed per head, and RoPE gives every token its position. Where the modulation comes from is
the model's: a Flux block computes it from the conditioning vector with its own ``Modulation`` layers; a Chroma block
has none and is handed its modulations as ``vec`` itself (the slices of the approximator's output for that block:
``((img_mod1, img_mod2), (txt_mod1, txt_mod2))`` for a double block, one ``(shift, scale, gate)`` for a single one),
read here as the hosts' blocks read it. The hosts differ in small ways (how a modulation module returns its chunks,
how ``(1 + scale) * x + shift`` and the gated residuals are computed, their RoPE and attention kernel), so those come
in as ``FluxOps`` from the host's adapter; the rest is the same.

A reference that keeps each block's input stores the image tokens' attention input (after the norm and the
modulation, which hold everything the conditioning gives them) and their RoPE rotations; ``double_image_kv`` and
``single_image_kv`` turn them into the keys and values the block computed, with its own modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import RefDropError

# (attn_img, q_img, k_img, v_img, x_img, pe_img) -> the image rows of the joint attention: the model's own
# ``attn_img`` [B, N, H * D] and the image tokens' roped q, k and v [B, H, N, D], their attention input ``x_img``
# [B, N, hidden] (what ``qkv`` / ``linear1`` project, after the norm and the modulation) and their rows of ``pe``
# (None without RoPE)
Guide = Callable[..., torch.Tensor]


def no_guide(attn_img, q_img, k_img, v_img, x_img=None, pe_img=None):
    return attn_img


def fp16_fix(x: torch.Tensor) -> torch.Tensor:
    """Both hosts clamp a half-precision stream after each block (it overflows on some prompts)."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (1 + scale) * x + shift


def gated_add(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A block's gated residual ``x + gate * y`` (Chroma's own blocks use one ``addcmul`` instead, which rounds
    differently: ``patcher/dit_blocks.py`` ``block_ops``)."""
    return x + gate * y


def modulation_triples(modulation, vec: torch.Tensor) -> list[tuple]:
    """``[(shift, scale, gate), ...]`` of a modulation module, whichever way it returns them: the reference design's
    ``(ModulationOut, ModulationOut | None)`` (reForge) or the six or three chunks themselves (Forge)."""
    out = modulation(vec)
    if hasattr(out[0], "shift"):
        return [(m.shift, m.scale, m.gate) for m in out if m is not None]
    return [tuple(out[i:i + 3]) for i in range(0, len(out), 3)]


def apply_rope(q: torch.Tensor, k: torch.Tensor, pe: torch.Tensor | None):
    """Rotary position embedding of q and k ``[B, H, L, D]``; ``pe`` ``[B, 1, L, D / 2, 2, 2]`` holds each pair of
    channels' rotation (EmbedND of the design). Computed in float32 like both hosts."""
    if pe is None:
        return q, k

    def rotate(x):
        pairs = x.to(pe.dtype).reshape(*x.shape[:-1], -1, 1, 2)
        return (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).reshape(*x.shape).type_as(x)

    return rotate(q), rotate(k)


@dataclass(frozen=True)
class FluxOps:
    """What a host does its own way inside a Flux or Chroma block."""

    # (q, k, v, attn_mask) [B, H, L, D], already roped -> [B, L, H * D]: the host's joint attention kernel
    joint_attention: Callable
    # (modulation module, vec) -> [(shift, scale, gate), ...]: two triples for a double block, one for a single
    modulation: Callable = modulation_triples
    modulate: Callable = modulate              # (x, shift, scale) -> (1 + scale) * x + shift
    gated_add: Callable = gated_add            # (x, gate, y) -> x + gate * y: the residual after attention and MLP
    rope: Callable = apply_rope                # (q, k, pe) -> (q, k) with RoPE applied
    fp16_fix: Callable = fp16_fix


def _triple(modulation) -> tuple:
    return modulation.shift, modulation.scale, modulation.gate


def double_modulations(block, vec, ops: FluxOps) -> tuple[list[tuple], list[tuple]]:
    """The image and text streams' ``[(shift, scale, gate)] * 2`` of a double block: from its ``img_mod`` and
    ``txt_mod`` layers where it has them (Flux), else from ``vec`` itself (Chroma)."""
    if getattr(block, "img_mod", None) is not None:
        return ops.modulation(block.img_mod, vec), ops.modulation(block.txt_mod, vec)
    img, txt = vec
    return [_triple(m) for m in img], [_triple(m) for m in txt]


def single_modulation(block, vec, ops: FluxOps) -> tuple:
    """A single block's ``(shift, scale, gate)``: from its ``modulation`` layer where it has one (Flux), else ``vec``
    itself (Chroma: Forge Neo's and later ComfyUI's blocks set ``modulation`` to None, the older ones have none)."""
    layer = getattr(block, "modulation", None)
    if isinstance(layer, torch.nn.Module):
        ((shift, scale, gate),) = ops.modulation(layer, vec)
        return shift, scale, gate
    return _triple(vec)


def _heads(qkv: torch.Tensor, n_heads: int):
    """``[B, L, 3 * H * D]`` -> q, k, v ``[B, H, L, D]``."""
    b, length, _ = qkv.shape
    return qkv.view(b, length, 3, n_heads, -1).permute(2, 0, 3, 1, 4)


def to_patch_layout(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, D]`` -> ``[B, L, H * D]``, the layout of the q, k, v an attn1 patch receives."""
    b, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * dim)


def _image_rows(pe: torch.Tensor | None, text_tokens: int) -> torch.Tensor | None:
    return None if pe is None else pe[:, :, text_tokens:]


def double_block(block, img, txt, vec, pe, attn_mask, ops: FluxOps, guide: Guide = no_guide):
    """One double-stream block: ``(img, txt)`` out; ``vec``: the conditioning vector (Flux) or the block's
    modulations (Chroma). ``guide`` sees the image rows of the joint attention and the image tokens' roped q, k, v;
    the text rows are left as they are (eq. 15)."""
    img_mods, txt_mods = double_modulations(block, vec, ops)
    (img_shift1, img_scale1, img_gate1), (img_shift2, img_scale2, img_gate2) = img_mods
    (txt_shift1, txt_scale1, txt_gate1), (txt_shift2, txt_scale2, txt_gate2) = txt_mods
    heads = block.num_heads

    img_in = ops.modulate(block.img_norm1(img), img_shift1, img_scale1)
    img_q, img_k, img_v = _heads(block.img_attn.qkv(img_in), heads)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    txt_q, txt_k, txt_v = _heads(block.txt_attn.qkv(ops.modulate(block.txt_norm1(txt), txt_shift1, txt_scale1)), heads)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    q, k = ops.rope(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), pe)
    v = torch.cat((txt_v, img_v), dim=2)
    attn = ops.joint_attention(q, k, v, attn_mask)
    text = txt.shape[1]
    txt_attn = attn[:, :text]
    img_attn = guide(attn[:, text:], q[:, :, text:], k[:, :, text:], v[:, :, text:], img_in, _image_rows(pe, text))

    add = ops.gated_add
    img = add(img, img_gate1, block.img_attn.proj(img_attn))
    img = add(img, img_gate2, block.img_mlp(ops.modulate(block.img_norm2(img), img_shift2, img_scale2)))
    txt = add(txt, txt_gate1, block.txt_attn.proj(txt_attn))
    txt = add(txt, txt_gate2, block.txt_mlp(ops.modulate(block.txt_norm2(txt), txt_shift2, txt_scale2)))
    return img, ops.fp16_fix(txt)


def single_block(block, x, vec, pe, attn_mask, text_tokens: int, ops: FluxOps, guide: Guide = no_guide):
    """One single-stream block on ``x = [txt; img]``; ``text_tokens``: how many rows of ``x`` are text."""
    shift, scale, gate = single_modulation(block, vec, ops)
    x_in = ops.modulate(block.pre_norm(x), shift, scale)
    qkv, mlp = torch.split(block.linear1(x_in), [3 * block.hidden_size, block.mlp_hidden_dim], dim=-1)
    q, k, v = _heads(qkv, block.num_heads)
    q, k = block.norm(q, k, v)
    q, k = ops.rope(q, k, pe)
    attn = ops.joint_attention(q, k, v, attn_mask)
    plain = attn[:, text_tokens:]
    img_attn = guide(plain, q[:, :, text_tokens:], k[:, :, text_tokens:], v[:, :, text_tokens:],
                     x_in[:, text_tokens:], _image_rows(pe, text_tokens))
    if img_attn is not plain:  # the text rows stay as they are
        attn = torch.cat((attn[:, :text_tokens], img_attn), dim=1)
    out = block.linear2(torch.cat((attn, block.mlp_act(mlp)), dim=2))
    return ops.fp16_fix(ops.gated_add(x, gate, out))


# -- a stored attention input projected again (a reference that keeps each block's input) -------------------------

def double_image_kv(block, x: torch.Tensor, positions: torch.Tensor | None, ops: FluxOps):
    """K and V ``[N, H * D]`` of the image tokens whose attention input (``double_block``'s ``img_in``) is ``x``
    ``[N, hidden]``, with their RoPE ``positions`` ``[N, D / 2, 2, 2]``: what the double block computes for them,
    with its own ``qkv``, QK-norm and the host's RoPE."""
    q, k, v = _heads(block.img_attn.qkv(x[None]), block.num_heads)
    q, k = block.img_attn.norm(q, k, v)
    return _roped_kv(q, k, v, positions, ops)


def single_image_kv(block, x: torch.Tensor, positions: torch.Tensor | None, ops: FluxOps):
    """The same for a single-stream block: its own ``linear1`` (called whole, as the block calls it, so that a LoRA
    or a cast in its forward applies; its MLP columns are dropped), QK-norm and RoPE."""
    qkv, _ = torch.split(block.linear1(x[None]), [3 * block.hidden_size, block.mlp_hidden_dim], dim=-1)
    q, k, v = _heads(qkv, block.num_heads)
    q, k = block.norm(q, k, v)
    return _roped_kv(q, k, v, positions, ops)


def _roped_kv(q, k, v, positions, ops: FluxOps):
    if positions is not None and 2 * positions.shape[-3] != k.shape[-1]:
        raise RefDropError(f"RefDrop: the reference's token positions are for attention heads of "
                           f"{2 * positions.shape[-3]} channels, the current model's are {k.shape[-1]}: it was saved "
                           "with a model of another architecture")
    _, k = ops.rope(q, k, None if positions is None else positions[None, None])
    return to_patch_layout(k)[0], to_patch_layout(v)[0]
