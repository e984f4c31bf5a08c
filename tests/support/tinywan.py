"""A tiny Wan-structured model (Wan 2.1 / 2.2) with random weights, in each host's convention, and its patcher.

Wan (Wan-Video/Wan2.1 ``wan/modules/model.py``) patchifies a video latent ``[B, C, frames, H, W]`` with a 3-D
convolution (1 x 2 x 2 patches) into tokens (frames x rows x columns; one frame for a picture) and runs single-stream
blocks: a self-attention over the tokens (q and k RMS-normed over the whole width, 3-axis RoPE: frame, row, column),
a cross-attention to the text (and, in the image-to-video models with CLIP-vision features, to those features,
which head the context: ``WanI2VCrossAttention``), a tanh-GELU MLP. Each block's modulation (shift, scale, gate before
the self-attention and before the MLP) is its own ``modulation`` parameter plus the model's projection of the
timestep embedding, ``e0``.

The hosts run those blocks three ways (read in their code; the names of the conventions):

- ``"comfyui"``: ComfyUI 0.3.6x (``comfy/ldm/wan/model.py``, since 2025-08-23): ``addcmul`` to modulate and for the
  gated residuals, ``apply_rope1`` (a product, then ``addcmul_``, in the frequencies' dtype), ``e0`` ``[B, 1, 6,
  dim]`` (one row per run of tokens where the timesteps are per frame: ``repeat_e``); ``transformer_options`` in the
  dit hook's ``args``, to every block, and on to its cross-attention.
- ``"neo"``: Forge Neo (``backend/nn/wan.py``): ``*`` and ``+``, comfy_kitchen's ``apply_rope1`` (on the CPU the
  same arithmetic), ``e0`` ``[B, 1, 6, dim]``; ``transformer_options`` in ``args`` and to every block, not to the
  cross-attention.
- ``"reforge"``: reForge (``ldm_patched/ldm/wan/model.py``): ``*`` and ``+``, the design's RoPE (``tinyflux
  .apply_rope``), ``e0`` ``[B, 6, dim]``; no ``transformer_options``.

Every host looks the blocks up in ``patches_replace["dit"]`` as ``("double_block", i)``. ``make_patcher`` gives the
patcher of each; ``tinyflux.sample`` samples it (a picture, or a clip of ``frames``; the image-to-video model also
takes ``clip_fea``).
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import torch
from torch import nn

from tests.support import tinyflux as tf
from tests.support.hostsim import sdpa_attention

BLOCKS, FFN = 3, 128
HEAD_DIM = tf.HIDDEN // tf.HEADS
AXES = (HEAD_DIM - 4 * (HEAD_DIM // 6), 2 * (HEAD_DIM // 6), 2 * (HEAD_DIM // 6))  # frame, row, column: (8, 4, 4)


# -- each convention's arithmetic ---------------------------------------------------------------------------------

def apply_rope1(x, freqs):
    """ComfyUI's ``apply_rope1`` and comfy_kitchen's on the CPU: a product, then ``addcmul_``."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * pairs[..., 0]
    out.addcmul_(freqs[..., 1], pairs[..., 1])
    return out.reshape(*x.shape).type_as(x)


def _each(rope1):
    return lambda q, k, freqs: (rope1(q, freqs), rope1(k, freqs))


ARITHMETIC = {
    "comfyui": SimpleNamespace(modulate=lambda x, shift, scale: torch.addcmul(shift, x, 1 + scale),
                               residual=lambda x, y, gate: torch.addcmul(x, y, gate), rope=_each(apply_rope1)),
    "neo": SimpleNamespace(modulate=lambda x, shift, scale: x * (1 + scale) + shift,
                           residual=lambda x, y, gate: x + y * gate, rope=_each(apply_rope1)),
    "reforge": SimpleNamespace(modulate=lambda x, shift, scale: x * (1 + scale) + shift,
                               residual=lambda x, y, gate: x + y * gate, rope=tf.apply_rope),
}


def repeat_e(e, x):
    """One modulation row per run of tokens (per-frame timesteps) stretched over ``x``'s tokens."""
    rows, tokens = e.shape[1], x.shape[1]
    if rows <= 1 or rows == tokens:
        return e
    return torch.repeat_interleave(e, -(-tokens // rows), dim=1)[:, :tokens]


# -- the blocks ---------------------------------------------------------------------------------------------------

class WanSelfAttention(nn.Module):
    def __init__(self, dim, heads, rope):
        super().__init__()
        self.num_heads, self.head_dim, self.rope = heads, dim // heads, rope
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)

    def forward(self, x, freqs):
        b, s, n = *x.shape[:2], self.num_heads
        q, k = self.rope(self.norm_q(self.q(x)).view(b, s, n, -1), self.norm_k(self.k(x)).view(b, s, n, -1), freqs)
        return self.o(sdpa_attention(q.view(b, s, -1), k.view(b, s, -1), self.v(x).view(b, s, -1), n))


class WanT2VCrossAttention(WanSelfAttention):
    def forward(self, x, context, transformer_options=None, **kwargs):
        q, k, v = self.norm_q(self.q(x)), self.norm_k(self.k(context)), self.v(context)
        return self.o(sdpa_attention(q, k, v, self.num_heads))


class WanI2VCrossAttention(WanSelfAttention):
    """Neo's and reForge's take no ``transformer_options``: a block that handed them on would fail here."""

    def __init__(self, dim, heads, rope):
        super().__init__(dim, heads, rope)
        self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k_img = nn.RMSNorm(dim, eps=1e-6)

    def forward(self, x, context, context_img_len):
        image, text = context[:, :context_img_len], context[:, context_img_len:]
        q = self.norm_q(self.q(x))
        to_image = sdpa_attention(q, self.norm_k_img(self.k_img(image)), self.v_img(image), self.num_heads)
        to_text = sdpa_attention(q, self.norm_k(self.k(text)), self.v(text), self.num_heads)
        return self.o(to_text + to_image)


class ComfyI2VCrossAttention(WanI2VCrossAttention):
    def forward(self, x, context, context_img_len, transformer_options=None):
        return super().forward(x, context, context_img_len)


class WanAttentionBlock(nn.Module):
    def __init__(self, dim, heads, convention, image_to_video=False):
        super().__init__()
        self.math = ARITHMETIC[convention]
        self.convention = convention
        self.dim, self.num_heads = dim, heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = WanSelfAttention(dim, heads, self.math.rope)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)  # cross_attn_norm
        cross = (ComfyI2VCrossAttention if convention == "comfyui" else WanI2VCrossAttention) if image_to_video \
            else WanT2VCrossAttention
        self.cross_attn = cross(dim, heads, self.math.rope)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(dim, FFN), nn.GELU(approximate="tanh"), nn.Linear(FFN, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x, e, freqs, context, context_img_len=None, transformer_options=None):
        math_ = self.math
        own = self.modulation.to(dtype=x.dtype, device=x.device)
        e = (own + e).chunk(6, dim=1) if e.ndim < 4 else (own.unsqueeze(0) + e).unbind(2)
        e = [repeat_e(m, x) for m in e]
        x = math_.residual(x, self.self_attn(math_.modulate(self.norm1(x), e[0], e[1]), freqs), e[2])
        options = {"transformer_options": transformer_options} if self.convention == "comfyui" else {}
        x = x + self.cross_attn(self.norm3(x), context, context_img_len=context_img_len, **options)
        return math_.residual(x, self.ffn(math_.modulate(self.norm2(x), e[3], e[4])), e[5])


# -- the model ----------------------------------------------------------------------------------------------------

class WanModel(nn.Module):
    """The tiny model, under ComfyUI's, Neo's and reForge's class name (how RefDrop recognises it)."""

    pooled_text = False
    conditioning = ("c_crossattn",)

    def __init__(self, seed: int = 0, convention: str = "comfyui", blocks: int = BLOCKS, image_to_video=False):
        super().__init__()
        torch.manual_seed(seed)
        self.convention = convention
        if image_to_video:
            self.conditioning = ("c_crossattn", "clip_fea")
            self.img_emb = nn.Sequential(nn.LayerNorm(tf.CLIP_DIM), nn.Linear(tf.CLIP_DIM, tf.HIDDEN), nn.GELU(),
                                         nn.Linear(tf.HIDDEN, tf.HIDDEN), nn.LayerNorm(tf.HIDDEN))
        self.patch_embedding = nn.Conv3d(tf.LATENT_CHANNELS, tf.HIDDEN, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.text_embedding = nn.Sequential(nn.Linear(tf.CONTEXT_DIM, tf.HIDDEN), nn.GELU(approximate="tanh"),
                                            nn.Linear(tf.HIDDEN, tf.HIDDEN))
        self.time_embedding = nn.Sequential(nn.Linear(256, tf.HIDDEN), nn.SiLU(), nn.Linear(tf.HIDDEN, tf.HIDDEN))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(tf.HIDDEN, 6 * tf.HIDDEN))
        self.blocks = nn.ModuleList(WanAttentionBlock(tf.HIDDEN, tf.HEADS, convention, image_to_video)
                                    for _ in range(blocks))
        self.head_norm = nn.LayerNorm(tf.HIDDEN, elementwise_affine=False, eps=1e-6)
        self.head = nn.Linear(tf.HIDDEN, tf.LATENT_CHANNELS * 4)
        self.head_modulation = nn.Parameter(torch.zeros(1, 2, tf.HIDDEN))
        self.rope_embedder = tf.EmbedND(10000, AXES)
        tf.randomize(self)

    def forward(self, x, timestep, context, clip_fea=None, transformer_options=None, **kwargs):
        picture = x.ndim == 4  # one frame
        video = x[:, :, None] if picture else x
        b, _, frames, h, w = video.shape
        tokens = self.patch_embedding(video).flatten(2).transpose(1, 2)
        ids = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(h // 2), torch.arange(w // 2),
                                         indexing="ij"), dim=-1).reshape(1, -1, 3).float()
        freqs = self.rope_embedder(ids).movedim(1, 2)
        e = self.time_embedding(tf.timestep_embedding(timestep, 256).to(tokens.dtype))
        # ComfyUI and Neo give every row one modulation row ([B, 1, 6, dim]), reForge none ([B, 6, dim])
        e0 = self.time_projection(e).unflatten(1, (6, tf.HIDDEN))
        e0 = e0 if self.convention == "reforge" else e0[:, None]
        context = self.text_embedding(context)
        context_img_len = None
        if clip_fea is not None:
            context = torch.cat((self.img_emb(clip_fea), context), dim=1)
            context_img_len = clip_fea.shape[-2]
        options = transformer_options or {}
        replace = options.get("patches_replace", {}).get("dit", {})
        extra = {} if self.convention == "reforge" else {"transformer_options": options}
        for i, block in enumerate(self.blocks):
            if ("double_block", i) in replace:
                def original(args, block=block):
                    return {"img": block(args["img"], context=args["txt"], e=args["vec"], freqs=args["pe"],
                                         context_img_len=context_img_len, **extra)}

                tokens = replace[("double_block", i)]({"img": tokens, "txt": context, "vec": e0, "pe": freqs, **extra},
                                                      {"original_block": original})["img"]
            else:
                tokens = block(tokens, e=e0, freqs=freqs, context=context, context_img_len=context_img_len, **extra)
        shift, scale = (self.head_modulation + e[:, None]).unbind(1)
        out = self.head(torch.addcmul(shift[:, None], self.head_norm(tokens), 1 + scale[:, None]))
        out = out.reshape(b, frames, h // 2, w // 2, -1, 2, 2).permute(0, 4, 1, 2, 5, 3, 6)
        out = out.reshape(video.shape)
        return out[:, :, 0] if picture else out


def make_patcher(convention: str, seed: int = 0, **model_args) -> tf.FluxPatcher:
    """``unet`` of a Wan checkpoint in ``convention``'s host: the model under the hosts' class name, the schedule where
    that host keeps it (Neo is Forge's backend: ``predictor``)."""
    model = SimpleNamespace(diffusion_model=WanModel(seed, convention=convention, **model_args))
    setattr(model, "predictor" if convention == "neo" else "model_sampling", tf.FlowSchedule())
    return tf.FluxPatcher(model)


def comfy_modules() -> dict[str, ModuleType]:
    """ComfyUI's ``comfy.ldm.wan.model`` as far as RefDrop reads it (its ``apply_rope1``), with its parent packages,
    by name: for ``sys.modules`` while ``lib_refdrop.comfyui.model.wan_ops`` is called."""
    names = ("comfy", "comfy.ldm", "comfy.ldm.wan", "comfy.ldm.wan.model")
    modules = [ModuleType(name) for name in names]
    modules[-1].apply_rope1 = apply_rope1
    for parent, child in zip(modules, modules[1:], strict=False):
        setattr(parent, child.__name__.rpartition(".")[2], child)
    return dict(zip(names, modules, strict=True))
