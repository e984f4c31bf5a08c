"""A tiny Qwen-Image-structured model with random weights, in each host's convention, and its patcher.

Qwen-Image (QwenLM/Qwen-Image) is an MMDiT: every block is double-stream. Text and image tokens keep their own
modulation (``SiLU -> Linear`` of the timestep embedding: shift, scale and gate before the attention and before the
MLP), LayerNorms, q/k/v projections (image ``to_q``/``to_k``/``to_v``, text ``add_q_proj``/``add_k_proj``/
``add_v_proj``), per-head RMS norms of q and k, output projections (``to_out``, ``to_add_out``) and tanh-GELU MLPs,
and attend jointly over ``[txt; img]`` with 3-axis RoPE (the image tokens centred on their grid, the text tokens on
the diagonal after it). The block returns ``(txt, img)``.

The hosts compute the block alike (ComfyUI since 2025-08-23 and Forge Neo, whose ``backend/nn/qwen.py`` is a copy:
``addcmul`` to modulate and after the MLP, ``x + gate * y`` after the attention, RoPE in the latent's dtype, their
kernel on ``[B, L, heads * head_dim]``); they differ in what they hand on (the names of the conventions):

- ``"comfyui"``: ComfyUI 0.3.6x (``comfy/ldm/qwen_image/model.py``): ``transformer_options`` in the dit hook's
  ``args`` and to every block;
- ``"neo"``: Forge Neo (``backend/nn/qwen.py``): neither.

``make_patcher`` gives the patcher of each; ``tinyflux.sample`` samples it (Qwen-Image takes no pooled text and no
guidance).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from tests.support import tinyflux as tf
from tests.support.hostsim import sdpa_attention

BLOCKS = 3
CLASS_NAME = "QwenImageTransformer2DModel"  # ComfyUI's and Neo's


class FeedForward(nn.Module):
    """``net``: a projection with tanh-GELU, dropout, a projection back (the design's names)."""

    def __init__(self, dim: int, mult: int = 2):
        super().__init__()
        self.net = nn.ModuleList([nn.Linear(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x):
        return self.net[2](self.net[1](F.gelu(self.net[0](x), approximate="tanh")))


class JointAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = nn.RMSNorm(self.dim_head, eps=1e-6), nn.RMSNorm(self.dim_head, eps=1e-6)
        self.norm_added_q = nn.RMSNorm(self.dim_head, eps=1e-6)
        self.norm_added_k = nn.RMSNorm(self.dim_head, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(dim, dim)

    def forward(self, img, txt, pe):
        def heads(linear, x):
            return linear(x).unflatten(-1, (self.heads, -1))

        q = torch.cat((self.norm_added_q(heads(self.add_q_proj, txt)), self.norm_q(heads(self.to_q, img))), dim=1)
        k = torch.cat((self.norm_added_k(heads(self.add_k_proj, txt)), self.norm_k(heads(self.to_k, img))), dim=1)
        v = torch.cat((heads(self.add_v_proj, txt), heads(self.to_v, img)), dim=1)
        q, k = rope(q, pe), rope(k, pe)
        out = sdpa_attention(q.flatten(start_dim=2), k.flatten(start_dim=2), v.flatten(start_dim=2), self.heads)
        text = txt.shape[1]
        return self.to_out[1](self.to_out[0](out[:, text:])), self.to_add_out(out[:, :text])


def rope(x, pe):
    """``x`` ``[B, L, heads, head_dim]`` rotated by ``pe`` ``[B, L, 1, head_dim / 2, 2, 2]`` in ``pe``'s dtype as
    given (the model casts it to the latent's)."""
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).reshape(*x.shape)


def modulated(x, params):
    shift, scale, gate = params.chunk(3, dim=-1)
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None]), gate[:, None]


class QwenImageTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.dim = dim
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.img_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.txt_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.img_mlp, self.txt_mlp = FeedForward(dim), FeedForward(dim)
        self.attn = JointAttention(dim, heads)

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb,
                transformer_options=None):
        img, txt = hidden_states, encoder_hidden_states
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_in, img_gate = modulated(self.img_norm1(img), img_mod1)
        txt_in, txt_gate = modulated(self.txt_norm1(txt), txt_mod1)
        img_attn, txt_attn = self.attn(img_in, txt_in, image_rotary_emb)
        img = img + img_gate * img_attn
        txt = txt + txt_gate * txt_attn
        img_in, img_gate = modulated(self.img_norm2(img), img_mod2)
        txt_in, txt_gate = modulated(self.txt_norm2(txt), txt_mod2)
        return (torch.addcmul(txt, txt_gate, self.txt_mlp(txt_in)),
                torch.addcmul(img, img_gate, self.img_mlp(img_in)))


class QwenImage(nn.Module):
    """The tiny model (``make_patcher`` names it as the hosts do)."""

    pooled_text = False  # conditioned on the text encoder's hidden states alone

    def __init__(self, seed: int = 0, convention: str = "comfyui", blocks: int = BLOCKS):
        super().__init__()
        torch.manual_seed(seed)
        self.convention = convention
        self.patch_channels = tf.LATENT_CHANNELS * 4
        self.pe_embedder = tf.EmbedND(10000, tf.AXES)
        self.img_in = nn.Linear(self.patch_channels, tf.HIDDEN)
        self.txt_norm = nn.RMSNorm(tf.CONTEXT_DIM, eps=1e-6)
        self.txt_in = nn.Linear(tf.CONTEXT_DIM, tf.HIDDEN)
        self.time_in = tf.MLPEmbedder(256, tf.HIDDEN)
        self.transformer_blocks = nn.ModuleList(QwenImageTransformerBlock(tf.HIDDEN, tf.HEADS) for _ in range(blocks))
        self.norm_out = nn.Sequential(nn.SiLU(), nn.Linear(tf.HIDDEN, 2 * tf.HIDDEN))
        self.norm_final = nn.LayerNorm(tf.HIDDEN, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(tf.HIDDEN, self.patch_channels)
        tf.randomize(self)

    def rotary(self, img_ids, text_tokens: int, dtype):
        """``pe`` of ``[txt; img]``: the image ids centred on their grid, the text ids on the diagonal after it."""
        rows, cols = int(img_ids[..., 1].max()) + 1, int(img_ids[..., 2].max()) + 1
        centred = img_ids - torch.tensor([0.0, rows // 2, cols // 2])
        start = max(rows, cols) // 2
        txt_ids = torch.arange(start, start + text_tokens, dtype=torch.float32).reshape(1, -1, 1)
        ids = torch.cat((txt_ids.repeat(img_ids.shape[0], 1, 3), centred), dim=1)
        return self.pe_embedder(ids).squeeze(1).unsqueeze(2).to(dtype)

    def forward(self, x, timestep, context, transformer_options=None, **kwargs):
        img, img_ids, _ = tf.patchify(x, context)
        options = transformer_options or {}
        pe = self.rotary(img_ids, context.shape[1], x.dtype)
        img = self.img_in(img)
        txt = self.txt_in(self.txt_norm(context))
        temb = self.time_in(tf.timestep_embedding(timestep, 256).to(img.dtype))
        replace = options.get("patches_replace", {}).get("dit", {})
        # ComfyUI passes transformer_options to every block and in a replacement's args; Neo does not
        extra = {"transformer_options": options} if self.convention == "comfyui" else {}
        for i, block in enumerate(self.transformer_blocks):
            if ("double_block", i) in replace:
                def original(args, block=block):
                    txt_out, img_out = block(hidden_states=args["img"], encoder_hidden_states=args["txt"],
                                             encoder_hidden_states_mask=None, temb=args["vec"],
                                             image_rotary_emb=args["pe"], **extra)
                    return {"img": img_out, "txt": txt_out}

                out = replace[("double_block", i)]({"img": img, "txt": txt, "vec": temb, "pe": pe, **extra},
                                                   {"original_block": original})
                img, txt = out["img"], out["txt"]
            else:
                txt, img = block(hidden_states=img, encoder_hidden_states=txt, encoder_hidden_states_mask=None,
                                 temb=temb, image_rotary_emb=pe, **extra)
        scale, shift = self.norm_out(temb).chunk(2, dim=1)
        img = torch.addcmul(shift[:, None], self.norm_final(img), 1 + scale[:, None])
        return tf.unpatchify(self.proj_out(img), x.shape)


def make_patcher(convention: str, seed: int = 0, **model_args) -> tf.FluxPatcher:
    """``unet`` of a Qwen-Image checkpoint in ``convention``'s host, the schedule where that host keeps it (Neo is
    Forge's backend: ``predictor``)."""
    cls = type(CLASS_NAME, (QwenImage,), {})
    model = SimpleNamespace(diffusion_model=cls(seed, convention=convention, **model_args))
    setattr(model, "predictor" if convention == "neo" else "model_sampling", tf.FlowSchedule())
    return tf.FluxPatcher(model)
