"""A tiny Flux-structured model with random weights, its flow sampler, and the two hosts' ways into its blocks.

The model follows the public Flux design (black-forest-labs/flux ``model.py`` / ``layers.py``): patchified
latents as image tokens, a text stream, a conditioning vector from the timestep, the distilled guidance and the
pooled text (``vec``) that modulates every block (shift, scale, gate), double-stream blocks (separate weights for
text and image, one joint attention), single-stream blocks on ``[txt; img]``, RMS-normed q and k, 3-axis RoPE.
Attention runs on the hosts' stand-in kernel (``hostsim.sdpa_attention``, skip_reshape as both hosts call it).

Each convention computes the modulation and RoPE the way that host does (reForge: one ``addcmul``; Forge Neo:
ComfyUI's ``apply_mod`` and comfy_kitchen's RoPE, which the fake Neo host's ``backend.nn.flux`` exports as Neo's
module does). ``Flux(convention="reforge")`` looks block replacements up in
``transformer_options["patches_replace"]["dit"]`` like reForge's ``Flux.forward_orig``; ``convention="forge"`` calls
each block directly like Forge's ``IntegratedFluxTransformer2DModel.inner_forward`` (``block(img=, txt=, vec=,
pe=)``), where the patcher's object patches reach it. ``FluxPatcher`` adds Forge's object patches (applied on load,
put back on unload) to the fake patcher; ``sample`` drives the model through the patcher's model function wrapper as
both hosts' samplers do.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from tests.support.fakehost.objects import FakeUnetPatcher
from tests.support.hostsim import sdpa_attention

HIDDEN, HEADS, AXES = 64, 4, (4, 6, 6)          # dim_head 16 = sum(AXES)
LATENT_CHANNELS, CONTEXT_DIM, VEC_DIM, TEXT_TOKENS = 4, 24, 32, 6
DOUBLE_BLOCKS, SINGLE_BLOCKS = 3, 4


# -- the design's pieces -----------------------------------------------------------------------------------------

def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    out = pos.unsqueeze(-1).double() * omega
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    return out.view(*out.shape[:-1], 2, 2).float()


def apply_rope(xq, xk, freqs):
    xq_ = xq.float().reshape(*xq.shape[:-1], -1, 1, 2)
    xk_ = xk.float().reshape(*xk.shape[:-1], -1, 1, 2)
    xq_out = freqs[..., 0] * xq_[..., 0] + freqs[..., 1] * xq_[..., 1]
    xk_out = freqs[..., 0] * xk_[..., 0] + freqs[..., 1] * xk_[..., 1]
    return xq_out.reshape(*xq.shape).type_as(xq), xk_out.reshape(*xk.shape).type_as(xk)


def neo_apply_rope(xq, xk, freqs):
    """Forge Neo's (and later ComfyUI's) ``apply_rope``: comfy_kitchen's, as its eager (CPU) backend computes it (a
    product, then ``addcmul_``: rounded differently from ``apply_rope``)."""

    def rotate(x):
        pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
        out = freqs[..., 0] * pairs[..., 0]
        out.addcmul_(freqs[..., 1], pairs[..., 1])
        return out.reshape(*x.shape).type_as(x)

    return rotate(xq), rotate(xk)


def attention(q, k, v, pe, mask=None, rope=apply_rope):
    q, k = rope(q, k, pe)
    return sdpa_attention(q, k, v, q.shape[1], mask=mask, skip_reshape=True)


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)


class EmbedND(nn.Module):
    def __init__(self, theta: int, axes_dim):
        super().__init__()
        self.theta, self.axes_dim = theta, list(axes_dim)

    def forward(self, ids):
        return torch.cat([rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])],
                         dim=-3).unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer, self.silu, self.out_layer = nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim,
                                                                                                       hidden_dim)

    def forward(self, x):
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        rrms = torch.rsqrt(torch.mean(x.float() ** 2, dim=-1, keepdim=True) + 1e-6)
        return (x.float() * rrms).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


@dataclass
class ModulationOut:
    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.is_double, self.multiplier = double, 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        out = self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:]) if self.is_double else None


def modulate(x, shift, scale):
    return (1 + scale) * x + shift


def modulate_addcmul(x, shift, scale):
    """reForge's ``apply_mod``: the same modulation as one ``addcmul``, rounded differently."""
    return torch.addcmul(shift, x, 1 + scale)


def neo_apply_mod(tensor, m_mult, m_add=None):
    """Forge Neo's (ComfyUI's) ``apply_mod`` without modulation dims: ``addcmul(m_add, tensor, m_mult)``."""
    return tensor * m_mult if m_add is None else torch.addcmul(m_add, tensor, m_mult)


def modulate_neo(x, shift, scale):
    return neo_apply_mod(x, 1 + scale, shift)


MODULATE = {"forge": modulate, "neo": modulate_neo, "reforge": modulate_addcmul}
ROPE = {"forge": apply_rope, "neo": neo_apply_rope, "reforge": apply_rope}


def _mlp(hidden, ratio):
    return nn.Sequential(nn.Linear(hidden, int(hidden * ratio)), nn.GELU(approximate="tanh"),
                         nn.Linear(int(hidden * ratio), hidden))


def _split_heads(qkv, heads):
    b, length, _ = qkv.shape
    return qkv.view(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio, modulate=modulate, rope=apply_rope):
        super().__init__()
        self.modulate, self.rope = modulate, rope
        self.num_heads, self.hidden_size = heads, hidden
        self.img_mod, self.txt_mod = Modulation(hidden, True), Modulation(hidden, True)
        self.img_norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.img_attn, self.txt_attn = SelfAttention(hidden, heads), SelfAttention(hidden, heads)
        self.img_norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.txt_norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.img_mlp, self.txt_mlp = _mlp(hidden, mlp_ratio), _mlp(hidden, mlp_ratio)

    def forward(self, img, txt, vec, pe, attn_mask=None):
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        mod = self.modulate
        img_q, img_k, img_v = _split_heads(
            self.img_attn.qkv(mod(self.img_norm1(img), img_mod1.shift, img_mod1.scale)), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = _split_heads(
            self.txt_attn.qkv(mod(self.txt_norm1(txt), txt_mod1.shift, txt_mod1.scale)), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                         torch.cat((txt_v, img_v), dim=2), pe, attn_mask, self.rope)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(mod(self.img_norm2(img), img_mod2.shift, img_mod2.scale))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(mod(self.txt_norm2(txt), txt_mod2.shift, txt_mod2.scale))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio, modulate=modulate, rope=apply_rope):
        super().__init__()
        self.modulate, self.rope = modulate, rope
        self.num_heads, self.hidden_size = heads, hidden
        self.mlp_hidden_dim = int(hidden * mlp_ratio)
        self.linear1 = nn.Linear(hidden, hidden * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden_dim, hidden)
        self.norm = QKNorm(hidden // heads)
        self.pre_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden, False)

    def forward(self, x, vec, pe, attn_mask=None):
        mod, _ = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1(self.modulate(self.pre_norm(x), mod.shift, mod.scale)),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = _split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe, attn_mask, self.rope)
        return x + mod.gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2))


class NeoDoubleStreamBlock(DoubleStreamBlock):
    """Forge Neo's block call: ``block(img=, txt=, vec=, pe=, attn_mask=, transformer_options=)``."""

    def forward(self, img, txt, vec, pe, attn_mask=None, transformer_options=None):
        return super().forward(img, txt, vec, pe, attn_mask)


class NeoSingleStreamBlock(SingleStreamBlock):
    def forward(self, x, vec, pe, attn_mask=None, transformer_options=None):
        return super().forward(x, vec, pe, attn_mask)


class LastLayer(nn.Module):
    def __init__(self, hidden, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


def patchify(x: torch.Tensor, context: torch.Tensor):
    """Latents ``[B, C, H, W]`` -> image tokens ``[B, H/2 * W/2, 4C]`` (2x2 patches), their ids (row and column on
    axes 1 and 2) and the text tokens' ids (all 0)."""
    b, c, h, w = x.shape
    img = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    img_ids = torch.zeros(h // 2, w // 2, 3)
    img_ids[..., 1] += torch.arange(h // 2, dtype=torch.float32)[:, None]
    img_ids[..., 2] += torch.arange(w // 2, dtype=torch.float32)[None, :]
    return img, img_ids.reshape(1, -1, 3).expand(b, -1, -1), torch.zeros(b, context.shape[1], 3)


def unpatchify(out: torch.Tensor, shape) -> torch.Tensor:
    b, c, h, w = shape
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def randomize(model: nn.Module) -> None:
    """Random weights of a size that keeps every block's contribution visible; ``model`` for inference."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("scale"):
                parameter.normal_(1.0, 0.1)
            elif parameter.ndim == 2:
                parameter.normal_(0.0, 1.0 / math.sqrt(parameter.shape[1]))
            else:
                parameter.normal_(0.0, 0.02)
    model.eval().requires_grad_(False)


class Flux(nn.Module):
    """The tiny model; the class name is the one reForge's Flux model has (how RefDrop recognises the family)."""

    pooled_text = True  # conditioned on the pooled text ``y`` too (Chroma: tinychroma.py, is not)

    def __init__(self, seed: int = 0, convention: str = "reforge", double_blocks: int = DOUBLE_BLOCKS,
                 single_blocks: int = SINGLE_BLOCKS, mlp_ratio: float = 2.0):
        super().__init__()
        torch.manual_seed(seed)
        self.convention = convention
        self.patch_channels = LATENT_CHANNELS * 4
        self.pe_embedder = EmbedND(10000, AXES)
        self.img_in = nn.Linear(self.patch_channels, HIDDEN)
        self.time_in, self.guidance_in = MLPEmbedder(256, HIDDEN), MLPEmbedder(256, HIDDEN)
        self.vector_in = MLPEmbedder(VEC_DIM, HIDDEN)
        self.txt_in = nn.Linear(CONTEXT_DIM, HIDDEN)
        double, single = ((NeoDoubleStreamBlock, NeoSingleStreamBlock) if convention == "neo"
                          else (DoubleStreamBlock, SingleStreamBlock))
        arithmetic = MODULATE[convention], ROPE[convention]
        self.double_blocks = nn.ModuleList(double(HIDDEN, HEADS, mlp_ratio, *arithmetic) for _ in range(double_blocks))
        self.single_blocks = nn.ModuleList(single(HIDDEN, HEADS, mlp_ratio, *arithmetic) for _ in range(single_blocks))
        self.final_layer = LastLayer(HIDDEN, self.patch_channels)
        randomize(self)

    def forward(self, x, timestep, context, y, guidance=None, transformer_options=None, **kwargs):
        img, img_ids, txt_ids = patchify(x, context)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, y, guidance, transformer_options or {})
        return unpatchify(out, x.shape)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, y, guidance, transformer_options):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        looks_up = self.convention in ("reforge", "neo")  # Forge main's Flux has no block replacement point
        replace = transformer_options.get("patches_replace", {}).get("dit", {}) if looks_up else {}
        # Forge Neo passes transformer_options to every block, and in a replacement's args
        extra = {"transformer_options": transformer_options} if self.convention == "neo" else {}
        img = run_blocks(self, img, txt, pe, lambda kind, i: vec, replace, extra, with_mask=False)
        return self.final_layer(img, vec)


def run_blocks(model, img, txt, pe, vec_of, replace: dict, extra: dict, with_mask: bool = True):
    """The double-, then the single-stream blocks of ``model`` as the hosts' ``forward_orig`` runs them; the image
    tokens out. A block with a replacement in ``replace`` (``patches_replace["dit"]``) is called through it, with
    ``args`` ``{"img", "txt", "vec", "pe", "attn_mask"}`` and the block as ``original_block``; ``vec_of(kind,
    i)``: the block's ``vec``; ``extra``: what the host also passes to the blocks and in ``args``
    (``transformer_options``); ``with_mask``: whether the host calls a block with ``attn_mask`` (Forge main's Flux
    does not)."""
    mask = {"attn_mask": None} if with_mask else {}
    for i, block in enumerate(model.double_blocks):
        vec = vec_of("double", i)
        if ("double_block", i) in replace:
            def original(args, block=block):
                out = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"], **mask, **extra)
                return {"img": out[0], "txt": out[1]}
            args = {"img": img, "txt": txt, "vec": vec, "pe": pe, "attn_mask": None, **extra}
            out = replace[("double_block", i)](args, {"original_block": original})
            img, txt = out["img"], out["txt"]
        else:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe, **mask, **extra)
    x = torch.cat((txt, img), 1)
    for i, block in enumerate(model.single_blocks):
        vec = vec_of("single", i)
        if ("single_block", i) in replace:
            def original(args, block=block):
                return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], **mask, **extra)}
            x = replace[("single_block", i)]({"img": x, "vec": vec, "pe": pe, "attn_mask": None, **extra},
                                             {"original_block": original})["img"]
        else:
            x = block(x, vec=vec, pe=pe, **mask, **extra)
    return x[:, txt.shape[1]:, ...]


# -- the host side: schedule, patcher, p, sampler ----------------------------------------------------------------

def time_shift(shift: float, t: float) -> float:
    return shift * t / (1 + (shift - 1) * t)


class FlowSchedule:
    """Flux's flow times (sigma = t in (0, 1], shifted), as both hosts' Flux schedules give ``percent_to_sigma``."""

    def __init__(self, shift: float = 1.15):
        self.shift = shift

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_shift(self.shift, 1.0 - percent)

    def sigmas(self, steps: int) -> list[float]:
        return [time_shift(self.shift, 1.0 - i / steps) for i in range(steps)] + [0.0]


class FluxPatcher(FakeUnetPatcher):
    """The fake patcher with Forge's object patches: ``add_object_patch(name, obj)`` sets ``name`` on the model when
    it is loaded (``loaded``) and puts back what was there after."""

    def __init__(self, model, model_options=None, load_device=None):
        super().__init__(model, model_options, load_device)
        self.object_patches: dict = {}

    def clone(self):
        n = FluxPatcher(self.model, None, self.load_device)
        n.model_options = super().clone().model_options
        n.object_patches = dict(self.object_patches)
        return n

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    @contextmanager
    def loaded(self):
        backup = {}
        for name, obj in self.object_patches.items():
            parent, _, attribute = name.rpartition(".")
            owner = _get(self.model, parent)
            backup[name] = getattr(owner, attribute)
            setattr(owner, attribute, obj)
        try:
            yield
        finally:
            for name, old in backup.items():
                parent, _, attribute = name.rpartition(".")
                setattr(_get(self.model, parent), attribute, old)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class IntegratedFluxTransformer2DModel(Flux):
    """The model under the class name Forge's Flux model has (``backend/nn/flux.py``), which looks up no block
    replacement: RefDrop reaches its blocks by object patches (``patcher/dit_blocks.py``)."""

    def __init__(self, seed: int = 0, **model_args):
        super().__init__(seed, convention="forge", **model_args)


class NeoFluxTransformer(Flux):
    """Forge Neo's Flux (``backend/nn/flux.py``): Forge's class name, but it looks up ``patches_replace["dit"]`` as
    ComfyUI's does and calls every block with ``transformer_options``
    (shared/research/forge-neo-classic.md, 1.4)."""

    def __init__(self, seed: int = 0, **model_args):
        super().__init__(seed, convention="neo", **model_args)


NeoFluxTransformer.__name__ = "IntegratedFluxTransformer2DModel"


def make_patcher(flavour: str, seed: int = 0, **model_args) -> FluxPatcher:
    """``unet`` of a Flux checkpoint in ``flavour``'s layout: the model's class and the schedule where that host
    keeps it."""
    if flavour == "forge":
        diffusion_model = IntegratedFluxTransformer2DModel(seed, **model_args)
    elif flavour == "neo":
        diffusion_model = NeoFluxTransformer(seed, **model_args)
    else:
        diffusion_model = Flux(seed, convention=flavour, **model_args)
    model = SimpleNamespace(diffusion_model=diffusion_model)
    setattr(model, "predictor" if flavour in ("forge", "neo") else "model_sampling", FlowSchedule())
    return FluxPatcher(model)


def make_p(unet: FluxPatcher, seed: int = 1234, **fields):
    from tests.support.fakehost.objects import make_p as fake_p

    p = fake_p(unet, family_flag="is_sd1", seed=seed, steps=3, cfg_scale=1.0, width=64, height=64, **fields)
    p.sd_model.is_sd1 = False  # Flux sets none of the U-Net flags
    return p


CLIP_TOKENS, CLIP_DIM = 5, 24  # CLIP-vision features (``clip_fea``) of an image-to-video model (tinywan.py)


def prompt(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"c_crossattn": torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=g),
            "y": torch.randn(1, VEC_DIM, generator=g),
            "clip_fea": torch.randn(1, CLIP_TOKENS, CLIP_DIM, generator=g)}


def sample(unet: FluxPatcher, seed: int = 1, steps: int = 3, size: int = 64, batch: int = 1, cfg: float = 1.0,
           split: bool = False, guidance: float = 3.5, cond_seed: int = 7, uncond_seed: int = 8,
           frames: int = 0) -> torch.Tensor:
    """Euler on the flow ODE, through the patcher's model function wrapper (``{"input", "timestep", "c",
    "cond_or_uncond"}``); ``cfg`` 1: one cond chunk (distilled guidance), else real CFG with uncond and cond rows in
    one call (``[1, 0]``) or, ``split``, in two calls. A model whose ``pooled_text`` is False (Chroma) gets no ``y``;
    one with ``conditioning`` gets those keys. ``frames``: a video latent of that many frames (else a picture's)."""
    model = unet.model.diffusion_model
    conds = {0: prompt(cond_seed), 1: prompt(uncond_seed)}
    keys = getattr(model, "conditioning", None) or (
        ("c_crossattn", "y") if getattr(model, "pooled_text", True) else ("c_crossattn",))
    shape = (batch, LATENT_CHANNELS, *((frames,) if frames else ()), size // 8, size // 8)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    layouts = [[0]] if cfg == 1.0 else ([[1], [0]] if split else [[1, 0]])
    wrapper = unet.model_options.get("model_function_wrapper")

    def apply_model(x_in, t, c_crossattn, guidance=None, transformer_options=None, **conditioning):
        return model(x_in, t, context=c_crossattn, guidance=guidance, transformer_options=transformer_options,
                     **conditioning)

    sigmas = FlowSchedule().sigmas(steps)
    with unet.loaded(), torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            velocity = {}
            for chunks in layouts:
                rows = batch * len(chunks)
                t = torch.full((rows,), sigma)
                options = {**unet.model_options["transformer_options"], "cond_or_uncond": list(chunks), "sigmas": t}
                c = {key: torch.cat([conds[ch][key].expand(batch, *conds[ch][key].shape[1:]) for ch in chunks])
                     for key in keys}
                c.update(guidance=torch.full((rows,), guidance), transformer_options=options)
                x_in = torch.cat([x] * len(chunks))
                if wrapper is not None:
                    out = wrapper(apply_model, {"input": x_in, "timestep": t, "c": c, "cond_or_uncond": list(chunks)})
                else:
                    out = apply_model(x_in, t, **c)
                for i, ch in enumerate(chunks):
                    velocity[ch] = out[i * batch:(i + 1) * batch]
            v = velocity[0] if cfg == 1.0 else velocity[1] + cfg * (velocity[0] - velocity[1])
            x = x + (sigma_next - sigma) * v
    return x
