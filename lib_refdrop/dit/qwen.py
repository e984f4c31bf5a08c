"""The Qwen-Image transformer block computed from its own modules, with the joint attention's image rows handed to a
guide (eq. 15); written from the public Qwen-Image design (QwenLM/Qwen-Image, an MMDiT: diffusers'
``QwenImageTransformerBlock``).

Every one of its 60 blocks is double-stream: text and image tokens keep their own modulation, LayerNorms,
projections (image ``to_q``/``to_k``/``to_v``, text ``add_q_proj``/``add_k_proj``/``add_v_proj``), per-head RMS
norms of q and k, output projections and MLPs, and attend jointly over ``[txt; img]`` with 3-axis RoPE. Each stream's
modulation is a ``SiLU -> Linear`` of the timestep embedding ``temb``, six vectors: (shift, scale, gate) before the
attention and before the MLP. The tokens stay ``[B, L, heads, head_dim]`` throughout; RoPE is applied in the dtype
the model hands it in (the model casts it to the latent's dtype), and the attention is the host's kernel on
``[B, L, heads * head_dim]``.

The hosts that run it (ComfyUI since 2025-08-23, whose ``comfy/ldm/qwen_image/model.py`` Forge Neo's
``backend/nn/qwen.py`` copies) compute it the same way: ``addcmul(shift, x, 1 + scale)`` to modulate, ``x + gate * y``
after the attention and ``addcmul(x, gate, y)`` after the MLP; only the kernel is theirs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .blocks import Guide, no_guide

# (q, k, v) [B, L, heads * head_dim], roped -> [B, L, heads * head_dim]: the host's attention kernel for one block
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _modulated(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` modulated by one stream's ``[B, 3 * dim]`` (shift, scale, gate), and the gate."""
    shift, scale, gate = params.chunk(3, dim=-1)
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)


def rotate(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``[B, L, heads, head_dim]``; ``pe`` ``[B, L, 1, head_dim / 2, 2, 2]`` holds each pair of
    channels' rotation, in whatever dtype the model gave it (no cast: the product promotes as the model's does)."""
    if x.shape[1] == 0:
        return x
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).reshape(*x.shape)


def _projected(x, heads: int, to_q, to_k, to_v, norm_q, norm_k):
    """One stream's q, k (RMS-normed per head) and v, ``[B, L, heads, head_dim]``."""
    q = norm_q(to_q(x).unflatten(-1, (heads, -1)))
    k = norm_k(to_k(x).unflatten(-1, (heads, -1)))
    return q, k, to_v(x).unflatten(-1, (heads, -1))


def qwen_block(block, img, txt, temb, pe, attend: Attend, guide: Guide = no_guide):
    """One Qwen-Image block: ``(img, txt)`` out (the model's own block returns them the other way round).
    ``guide`` sees the image rows of the joint attention and the image tokens' roped q, k, v (``[B, heads, L,
    head_dim]`` views, as a Flux block gives them); the text rows are left as they are (eq. 15)."""
    img_mod1, img_mod2 = block.img_mod(temb).chunk(2, dim=-1)
    txt_mod1, txt_mod2 = block.txt_mod(temb).chunk(2, dim=-1)
    img_in, img_gate1 = _modulated(block.img_norm1(img), img_mod1)
    txt_in, txt_gate1 = _modulated(block.txt_norm1(txt), txt_mod1)

    attn = block.attn
    img_q, img_k, img_v = _projected(img_in, attn.heads, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
    txt_q, txt_k, txt_v = _projected(txt_in, attn.heads, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                                     attn.norm_added_q, attn.norm_added_k)
    q = rotate(torch.cat((txt_q, img_q), dim=1), pe)
    k = rotate(torch.cat((txt_k, img_k), dim=1), pe)
    v = torch.cat((txt_v, img_v), dim=1)
    joint = attend(q.flatten(start_dim=2), k.flatten(start_dim=2), v.flatten(start_dim=2))

    text = txt.shape[1]
    img_attn = guide(joint[:, text:], *(t[:, text:].transpose(1, 2) for t in (q, k, v)))
    img = img + img_gate1 * attn.to_out[1](attn.to_out[0](img_attn))
    txt = txt + txt_gate1 * attn.to_add_out(joint[:, :text])

    img_in, img_gate2 = _modulated(block.img_norm2(img), img_mod2)
    img = torch.addcmul(img, img_gate2, block.img_mlp(img_in))
    txt_in, txt_gate2 = _modulated(block.txt_norm2(txt), txt_mod2)
    txt = torch.addcmul(txt, txt_gate2, block.txt_mlp(txt_in))
    return img, txt
