"""A tiny Chroma-structured model with random weights, in each host's block convention, and its patcher.

Chroma (lodestones' model built from Flux schnell) keeps Flux's double- and single-stream blocks and its RoPE, but
has no conditioning vector and no modulation layer in any block: an *approximator* (``distilled_guidance_layer``:
an input projection, residual RMS-normed MLPs, an output projection) maps the embeddings of the timestep, the
distilled guidance and a running index to one hidden-size vector per (shift, scale, gate) of the whole model, and
each block is handed its own slice as ``vec``. The order of the slices (``Chroma.modulations``): every single
block's three, then every double block's six for the image stream, then six each for the text stream, then the
final layer's (shift, scale).

The hosts run those blocks three ways (read in their code; the names of the conventions):

- ``"comfyui"``: ComfyUI 0.3.6x (``comfy/ldm/chroma``): Chroma's own block classes, with no ``modulation`` attribute;
  ``addcmul(shift, 1 + scale, x)`` to modulate and an in-place ``addcmul_`` for each gated residual;
  ``forward_orig`` passes ``transformer_options`` in the dit hook's ``args`` and to every block.
- ``"reforge"``: reForge ``ldm_patched/ldm/chroma``: the same blocks, without ``transformer_options``.
- ``"neo"``: Forge Neo (``backend/nn/chroma.py``, ``IntegratedChromaTransformer2DModel``; later ComfyUI builds Chroma
  the same way): Flux's blocks with their modulation off (``modulation`` False on a double block, None on a single
  one), Neo's ``apply_mod`` (``addcmul(shift, x, 1 + scale)``), comfy_kitchen's RoPE (a product, then ``addcmul_``)
  and ``+= y * gate`` residuals (``tinyflux.py``'s Neo arithmetic); ``transformer_options`` in ``args`` and to every
  block.

``make_patcher`` gives the patcher of each; ``tinyflux.sample`` samples it (Chroma takes no pooled text).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from tests.support import tinyflux as tf

APPROXIMATOR_HIDDEN, APPROXIMATOR_LAYERS = 32, 2
EMBED_T, EMBED_INDEX = 16, 32  # the approximator's input: timestep and guidance (16 each), the running index (32)
CLASS_NAMES = {"comfyui": "Chroma", "reforge": "Chroma", "neo": "IntegratedChromaTransformer2DModel"}


# -- each convention's arithmetic ---------------------------------------------------------------------------------

def own_modulate(x, shift, scale):
    """Chroma's own blocks: ``addcmul(shift, 1 + scale, x)``."""
    return torch.addcmul(shift, 1 + scale, x)


def own_residual(x, gate, y):
    """Chroma's own blocks: ``x.addcmul_(gate, y)``, in place."""
    return x.addcmul_(gate, y)


def neo_residual(x, gate, y):
    """Neo's ``x += apply_mod(y, gate)``."""
    x += tf.neo_apply_mod(y, gate)
    return x


ARITHMETIC = {
    # ComfyUI 0.3.6x's and reForge's Flux ``attention`` ropes as the reference design does
    "comfyui": SimpleNamespace(modulate=own_modulate, residual=own_residual, rope=tf.apply_rope),
    "reforge": SimpleNamespace(modulate=own_modulate, residual=own_residual, rope=tf.apply_rope),
    "neo": SimpleNamespace(modulate=tf.modulate_neo, residual=neo_residual, rope=tf.neo_apply_rope),
}


# -- the blocks ---------------------------------------------------------------------------------------------------

class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio, convention):
        super().__init__()
        self.math = ARITHMETIC[convention]
        self.num_heads, self.hidden_size = heads, hidden
        if convention == "neo":
            self.modulation = False  # Flux's block with its modulation layers off
        self.img_norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.img_attn, self.txt_attn = tf.SelfAttention(hidden, heads), tf.SelfAttention(hidden, heads)
        self.img_norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.txt_norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.img_mlp, self.txt_mlp = tf._mlp(hidden, mlp_ratio), tf._mlp(hidden, mlp_ratio)

    def forward(self, img, txt, vec, pe, attn_mask=None, transformer_options=None):
        (img_mod1, img_mod2), (txt_mod1, txt_mod2) = vec
        math_ = self.math
        img_q, img_k, img_v = tf._split_heads(
            self.img_attn.qkv(math_.modulate(self.img_norm1(img), img_mod1.shift, img_mod1.scale)), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = tf._split_heads(
            self.txt_attn.qkv(math_.modulate(self.txt_norm1(txt), txt_mod1.shift, txt_mod1.scale)), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        attn = tf.attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                          torch.cat((txt_v, img_v), dim=2), pe, attn_mask, math_.rope)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        img = math_.residual(img, img_mod1.gate, self.img_attn.proj(img_attn))
        img = math_.residual(img, img_mod2.gate,
                             self.img_mlp(math_.modulate(self.img_norm2(img), img_mod2.shift, img_mod2.scale)))
        txt = math_.residual(txt, txt_mod1.gate, self.txt_attn.proj(txt_attn))
        txt = math_.residual(txt, txt_mod2.gate,
                             self.txt_mlp(math_.modulate(self.txt_norm2(txt), txt_mod2.shift, txt_mod2.scale)))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio, convention):
        super().__init__()
        self.math = ARITHMETIC[convention]
        self.num_heads, self.hidden_size = heads, hidden
        self.mlp_hidden_dim = int(hidden * mlp_ratio)
        if convention == "neo":
            self.modulation = None
        self.linear1 = nn.Linear(hidden, hidden * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden_dim, hidden)
        self.norm = tf.QKNorm(hidden // heads)
        self.pre_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")

    def forward(self, x, vec, pe, attn_mask=None, transformer_options=None):
        math_ = self.math
        qkv, mlp = torch.split(self.linear1(math_.modulate(self.pre_norm(x), vec.shift, vec.scale)),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = tf._split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = tf.attention(q, k, v, pe, attn_mask, math_.rope)
        return math_.residual(x, vec.gate, self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2)))


# -- the model ----------------------------------------------------------------------------------------------------

class Approximator(nn.Module):
    """Embeddings of (timestep, guidance, index) -> one modulation vector per index."""

    def __init__(self, in_dim, hidden_dim, out_dim, n_layers):
        super().__init__()
        self.in_proj = nn.Linear(in_dim, hidden_dim)
        self.layers = nn.ModuleList(tf.MLPEmbedder(hidden_dim, hidden_dim) for _ in range(n_layers))
        self.norms = nn.ModuleList(tf.RMSNorm(hidden_dim) for _ in range(n_layers))
        self.out_proj = nn.Linear(hidden_dim, out_dim)

    def forward(self, x):
        x = self.in_proj(x)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = x + layer(norm(x))
        return self.out_proj(x)


class ChromaLastLayer(nn.Module):
    def __init__(self, hidden, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)

    def forward(self, x, shift, scale):
        return self.linear(torch.addcmul(shift, 1 + scale, self.norm_final(x)))


class Chroma(nn.Module):
    """The tiny model; ``make_patcher`` gives it the class name of the host's Chroma (how RefDrop recognises it)."""

    pooled_text = False  # Chroma is conditioned on T5 alone: no ``y``

    def __init__(self, seed: int = 0, convention: str = "comfyui", double_blocks: int = tf.DOUBLE_BLOCKS,
                 single_blocks: int = tf.SINGLE_BLOCKS, mlp_ratio: float = 2.0):
        super().__init__()
        torch.manual_seed(seed)
        self.convention = convention
        self.patch_channels = tf.LATENT_CHANNELS * 4
        self.pe_embedder = tf.EmbedND(10000, tf.AXES)
        self.img_in = nn.Linear(self.patch_channels, tf.HIDDEN)
        self.txt_in = nn.Linear(tf.CONTEXT_DIM, tf.HIDDEN)
        self.distilled_guidance_layer = Approximator(2 * EMBED_T + EMBED_INDEX, APPROXIMATOR_HIDDEN, tf.HIDDEN,
                                                     APPROXIMATOR_LAYERS)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(tf.HIDDEN, tf.HEADS, mlp_ratio, convention)
                                           for _ in range(double_blocks))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(tf.HIDDEN, tf.HEADS, mlp_ratio, convention)
                                           for _ in range(single_blocks))
        self.final_layer = ChromaLastLayer(tf.HIDDEN, self.patch_channels)
        tf.randomize(self)
        with torch.no_grad():  # shifts, scales and gates of a usable size
            self.distilled_guidance_layer.out_proj.weight.mul_(0.3)

    def modulations(self, timesteps, guidance, dtype):
        """``[B, n, hidden]``: every block's (shift, scale, gate) vectors and the final layer's (shift, scale)."""
        count = 3 * len(self.single_blocks) + 12 * len(self.double_blocks) + 2
        t = tf.timestep_embedding(timesteps, EMBED_T).to(dtype)
        g = tf.timestep_embedding(guidance, EMBED_T).to(dtype)
        index = tf.timestep_embedding(torch.arange(count), EMBED_INDEX).to(dtype)
        rows = t.shape[0]
        inputs = torch.cat([torch.cat([t, g], dim=1)[:, None].expand(rows, count, -1),
                            index[None].expand(rows, -1, -1)], dim=-1)
        return self.distilled_guidance_layer(inputs)

    def single_mod(self, mods, i):
        return _out(mods, 3 * i)

    def double_mod(self, mods, i):
        img = 3 * len(self.single_blocks) + 6 * i
        txt = img + 6 * len(self.double_blocks)
        return (_out(mods, img), _out(mods, img + 3)), (_out(mods, txt), _out(mods, txt + 3))

    def block_mod(self, mods, kind: str, i: int):
        """What the ``kind`` ("double" or "single") block ``i`` is handed as ``vec``."""
        return self.double_mod(mods, i) if kind == "double" else self.single_mod(mods, i)

    def forward(self, x, timestep, context, guidance=None, transformer_options=None, **kwargs):
        img, img_ids, txt_ids = tf.patchify(x, context)
        guidance = guidance if guidance is not None else torch.zeros_like(timestep)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, guidance, transformer_options or {})
        return tf.unpatchify(out, x.shape)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, guidance, transformer_options):
        img = self.img_in(img)
        mods = self.modulations(timesteps, guidance, img.dtype)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        # ComfyUI and Neo pass transformer_options to every block and in a replacement's args; reForge does not
        extra = {} if self.convention == "reforge" else {"transformer_options": transformer_options}
        img = tf.run_blocks(self, img, txt, pe, lambda kind, i: self.block_mod(mods, kind, i), replace, extra)
        return self.final_layer(img, mods[:, -2:-1], mods[:, -1:])


def _out(mods, offset: int) -> tf.ModulationOut:
    return tf.ModulationOut(*(mods[:, offset + j:offset + j + 1] for j in range(3)))


def make_patcher(convention: str, seed: int = 0, **model_args) -> tf.FluxPatcher:
    """``unet`` of a Chroma checkpoint in ``convention``'s host: the model under that host's class name, the schedule
    where that host keeps it (Neo is Forge's backend: ``predictor``)."""
    cls = type(CLASS_NAMES[convention], (Chroma,), {})
    model = SimpleNamespace(diffusion_model=cls(seed, convention=convention, **model_args))
    setattr(model, "predictor" if convention == "neo" else "model_sampling", tf.FlowSchedule())
    return tf.FluxPatcher(model)
