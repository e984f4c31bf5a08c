"""Emulation of how Forge / reForge call an attn1 *replace patch* (docs/hosts.md, "The attn1 replace patch").

:class:`AttnHost` wraps a diffusers U-Net and puts a custom processor on every self-attention (``attn1``) module.
Per call it does what the hosts' ``BasicTransformerBlock`` does: ``q = to_q(n)``, ``k = to_k(n)``, ``v = to_v(n)``
(heads *not* split), ``out = patch(q, k, v, extra_options)``, then ``to_out``.  Cross-attention (attn2) keeps
diffusers' default processor and never reaches the patch, exactly as on the hosts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from lib_refdrop.attn.sources import LinearKV

from .unet import LayerInfo, layer_map

__all__ = ["AttnHost", "RecordingPatch", "host_attention", "sdpa_attention", "tome_groups"]

Patch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
FLAVOURS = (None, "forge", "reforge")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, mask: torch.Tensor | None = None,
                   attn_precision=None, skip_reshape: bool = False, skip_output_reshape: bool = False) -> torch.Tensor:
    """The "host attention function": same signature as Forge ``attention_function`` / reForge
    ``optimized_attention`` (``attn_precision`` ignored), computed like diffusers' ``AttnProcessor2_0``.

    ``q``: ``[b, nq, heads*d]``, ``k``/``v``: ``[b, nk, heads*d]`` (or ``[b, heads, n, d]`` with ``skip_reshape``).
    The plain attn1 path uses this very function, so a pass-through patch is bit-identical to no patch.
    """
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, inner = q.shape
        dim_head = inner // n_heads
        q, k, v = (t.view(b, -1, n_heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, -1, n_heads * dim_head)


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """``sdpa_attention`` in the form of an attn1 patch, ``(q, k, v, extra_options) -> out``: what attn1 computes
    without RefDrop, for ``PassContext.attention`` (lib_refdrop/run.py)."""
    return sdpa_attention(q, k, v, extra_options["n_heads"])


def tome_groups(tokens: int, ratio: float) -> tuple[torch.Tensor, int]:
    """Token-merging stand-in: ``(group of each token, number of merged tokens)``.

    Forge's ToMe keeps ``tokens - min(int(tokens*ratio), 3*tokens//4)`` query tokens (256 -> 128 at 0.5).  We merge
    runs of neighbouring tokens (pairs at 0.5) by averaging and unmerge by copying the merged result back to every
    member: same shapes as the host, not ToMe's similarity matching.
    """
    n_keep = tokens - min(int(tokens * ratio), 3 * tokens // 4)
    groups = torch.arange(tokens) * n_keep // tokens
    return groups, n_keep


def _tome_merge(n: torch.Tensor, groups: torch.Tensor, n_keep: int) -> torch.Tensor:
    summed = n.new_zeros(n.shape[0], n_keep, n.shape[2]).index_add_(1, groups, n)
    counts = torch.bincount(groups, minlength=n_keep).to(n.dtype)
    return summed / counts[None, :, None]


class RecordingPatch:
    """A patch that logs every call (a compact summary plus the raw ``extra_options``) and runs plain attention.

    Used by the trace tests, and handy for engine tests that want to see what the host passed.
    """

    def __init__(self, inner: Patch | None = None):
        self.inner = inner
        self.calls: list[dict] = []

    def __call__(self, q, k, v, extra_options):
        eo = extra_options
        self.calls.append(dict(
            block=tuple(eo["block"]), block_index=eo["block_index"], transformer_index=eo["transformer_index"],
            cond_or_uncond=list(eo["cond_or_uncond"]), q=list(q.shape), k=list(k.shape), v=list(v.shape),
            sigmas=eo["sigmas"].tolist(), n_heads=eo["n_heads"], dim_head=eo["dim_head"],
            original_shape=list(eo["original_shape"]), extra_options=eo,
        ))
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return sdpa_attention(q, k, v, eo["n_heads"])


class _Attn1Processor:
    """diffusers attention processor for one attn1 module; the residual/norm handling copies AttnProcessor2_0."""

    def __init__(self, host: AttnHost, layer: LayerInfo):
        self.host = host
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("hostsim attn1 processor expects pure self-attention without mask")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        hidden_states = self.host._attn1(attn, self.layer, hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttnHost:
    """A diffusers U-Net driven like a Forge/reForge U-Net with an attn1 replace patch.

    - ``patch``: one function for every attn1 layer (``set_model_replace_all(patch, "attn1")``); ``None`` = plain.
    - ``patches_replace``: per-layer patches keyed like the hosts, ``(name, number, block_index)`` first, then
      ``(name, number)``; they win over ``patch``.
    - ``transformer_options``: custom keys copied (by reference) into every ``extra_options``, like
      ``unet.set_transformer_option``.
    - ``attn1_patches``: ``set_model_attn1_patch``'s chain, run on the normed hidden states before the projections.
    - ``model_wrapper``: a model function wrapper, ``wrapper(apply_model, args)`` (``set_model_unet_function_wrapper``
      in both hosts); ``sampling.call_model`` calls the U-Net through it.
    - ``tome_ratio``: token-merging emulation on the highest-resolution attention level (query side only).  On
      SD1.5 that is where Forge merges (input 1,2 / output 9,10,11).  Real ToMe (max_downsample 1) would merge
      nothing on SDXL, whose top level has no attention; hostsim merges SDXL's input 4,5 / output 3,4,5 instead so
      engine tests still see ``q`` shorter than ``k``/``v`` there.
    - ``host_flavour``: ``None`` sends only the keys both hosts send; ``"forge"`` adds ``cond_mark``,
      ``cond_indices``, ``uncond_indices``; ``"reforge"`` adds ``uuids``, ``activations_shape``, ``attn_precision``.

    Call :meth:`forward` (not ``unet`` directly) so that the per-call keys (``cond_or_uncond``, ``sigmas``,
    ``original_shape``) are known.
    """

    attention = staticmethod(sdpa_attention)

    def __init__(self, unet: UNet2DConditionModel, patch: Patch | None = None, tome_ratio: float = 0.0,
                 host_flavour: str | None = None):
        if host_flavour not in FLAVOURS:
            raise ValueError(f"host_flavour must be one of {FLAVOURS}")
        self.unet = unet
        self.patch = patch
        self.patches_replace: dict[tuple, Patch] = {}
        self.transformer_options: dict = {}
        self.model_wrapper = None
        self.attn1_patches: list = []  # set_model_attn1_patch: (n, context, value, extra_options) -> the same
        self.tome_ratio = tome_ratio
        self.host_flavour = host_flavour
        self.layers = layer_map(unet)
        self.tome_level = min(layer.level for layer in self.layers)
        self.n_forwards = 0
        self._ctx: dict | None = None
        self._tf_count = -1
        self._activations_shape: list[int] | None = None
        self._orig_processors = {}
        self._projections: dict[str, tuple] | None = None  # layer id -> (to_k, to_v), on first use
        self._handles = [unet.register_forward_pre_hook(self._reset_counter)]
        modules = dict(unet.named_modules())
        for tr_name in dict.fromkeys(layer.transformer_name for layer in self.layers):
            self._handles.append(modules[tr_name].register_forward_pre_hook(self._count_transformer, with_kwargs=True))
        for layer in self.layers:
            attn = modules[layer.name]
            self._orig_processors[layer.name] = attn.processor
            attn.set_processor(_Attn1Processor(self, layer))

    def projections(self, lid: str) -> LinearKV:
        """``LinearKV(to_k, to_v)`` of the attn1 layer ``lid`` (``"input1.0"``): what a host reaches through its
        diffusion model by block and index, looked up once per layer as the hosts do
        (``patcher/unet_layers.projections_of``): a Use asks for every stored row."""
        if self._projections is None:
            modules = dict(self.unet.named_modules())
            self._projections = {f"{layer.block[0]}{layer.block[1]}.{layer.block_index}":
                                 LinearKV(modules[layer.name].to_k, modules[layer.name].to_v) for layer in self.layers}
        try:
            return self._projections[lid]
        except KeyError:
            raise KeyError(f"no attn1 layer {lid}") from None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Restore the original processors and remove the hooks (the U-Net is then plain diffusers again)."""
        modules = dict(self.unet.named_modules())
        for name, proc in self._orig_processors.items():
            modules[name].set_processor(proc)
        self._orig_processors.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor, *,
                cond_or_uncond: list[int], sigmas: torch.Tensor, pooled: torch.Tensor | None = None,
                transformer_options: dict | None = None) -> torch.Tensor:
        """One U-Net call: ``x`` ``[rows, C, H, W]`` (already scaled by c_in), ``context`` ``[rows, T, D]``.

        ``rows`` must be ``len(cond_or_uncond) * len(sigmas)``.  SDXL's ``added_cond_kwargs`` are derived here
        (pooled = first context token, time_ids = image size) so callers need not care.  ``transformer_options``:
        keys of this call's ``transformer_options`` (a model function wrapper's), copied into every
        ``extra_options`` like the hosts do.  Returns eps.
        """
        rows = x.shape[0]
        if rows != len(cond_or_uncond) * sigmas.shape[0] or context.shape[0] != rows:
            raise ValueError(f"rows {rows} != len(cond_or_uncond) {len(cond_or_uncond)} * B {sigmas.shape[0]}")
        kwargs = {}
        if self.unet.config.addition_embed_type == "text_time":
            kwargs["added_cond_kwargs"] = self._sdxl_added_cond(x, context, pooled)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(float(timestep))
        self._ctx = dict(cond_or_uncond=list(cond_or_uncond), sigmas=sigmas.to(torch.float32),
                         original_shape=list(x.shape), options=dict(transformer_options or {}))
        try:
            out = self.unet(x, timestep, encoder_hidden_states=context, **kwargs).sample
        finally:
            self._ctx = None
        self.n_forwards += 1
        return out

    __call__ = forward

    def _sdxl_added_cond(self, x, context, pooled):
        cfg = self.unet.config
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        if pooled is None:
            first = context[:, 0]
            reps = -(-pooled_dim // first.shape[-1])
            pooled = first.repeat(1, reps)[:, :pooled_dim]
        h, w = x.shape[-2] * 8, x.shape[-1] * 8
        time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=x.dtype).expand(x.shape[0], 6)
        return {"text_embeds": pooled.to(x.dtype), "time_ids": time_ids}

    # -- hooks -----------------------------------------------------------------------------------------------
    def _reset_counter(self, module, args):
        self._tf_count = -1

    def _count_transformer(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self._tf_count += 1
        self._activations_shape = list(hidden.shape)

    # -- attn1 -----------------------------------------------------------------------------------------------
    def _lookup(self, layer: LayerInfo) -> Patch | None:
        pr = self.patches_replace
        if pr:
            if layer.key in pr:
                return pr[layer.key]
            if layer.block in pr:
                return pr[layer.block]
        return self.patch

    def extra_options(self, layer: LayerInfo) -> dict:
        """A fresh ``extra_options`` dict for ``layer`` in the current forward, with the host's key order."""
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError("attn1 patch called outside AttnHost.forward(): cond_or_uncond/sigmas unknown")
        cou, sigmas = ctx["cond_or_uncond"], ctx["sigmas"]
        b = sigmas.shape[0]
        eo = {**self.transformer_options, **ctx["options"]}
        eo["cond_or_uncond"] = cou
        if self.host_flavour == "reforge":
            eo["uuids"] = [0] * len(cou)
        eo["sigmas"] = sigmas
        if self.host_flavour == "forge":
            mark = [float(c) for c in cou for _ in range(b)]
            eo["cond_mark"] = torch.tensor(mark, dtype=torch.float32)
            eo["cond_indices"] = [i for i, m in enumerate(mark) if m == 0.0]
            eo["uncond_indices"] = [i for i, m in enumerate(mark) if m == 1.0]
        eo["original_shape"] = list(ctx["original_shape"])
        eo["transformer_index"] = self._tf_count
        eo["block"] = layer.block
        if self.host_flavour == "reforge":
            eo["activations_shape"] = list(self._activations_shape)
        eo["block_index"] = layer.block_index
        eo["n_heads"] = layer.n_heads
        eo["dim_head"] = layer.dim_head
        if self.host_flavour == "reforge":
            eo["attn_precision"] = None
        return eo

    def _attn1(self, attn, layer: LayerInfo, n: torch.Tensor) -> torch.Tensor:
        """``n`` is the normed hidden state ``[rows, tokens, C]``; returns the attn1 output after ``to_out``."""
        groups = None
        q_in = n
        if self.tome_ratio > 0 and layer.level == self.tome_level:
            groups, n_keep = tome_groups(n.shape[1], self.tome_ratio)
            q_in = _tome_merge(n, groups, n_keep)  # Forge: ToMe attn1_patch shrinks n, context/value stay n
        context = value = n
        if self.attn1_patches:  # after ToMe's, like an attn1_patch appended by an extension
            extra_options = self.extra_options(layer)
            for attn1_patch in self.attn1_patches:
                q_in, context, value = attn1_patch(q_in, context, value, extra_options)
        q, k, v = attn.to_q(q_in), attn.to_k(context), attn.to_v(value)
        patch = self._lookup(layer)
        if patch is None:
            out = sdpa_attention(q, k, v, layer.n_heads)
        else:
            out = patch(q, k, v, self.extra_options(layer))
            if not torch.is_tensor(out) or out.shape != q.shape:
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                raise ValueError(f"attn1 patch at {layer.key} returned {got}, expected {tuple(q.shape)}")
        out = attn.to_out[1](attn.to_out[0](out))
        if groups is not None:
            out = out[:, groups]  # ToMe attn1_output_patch: unmerge back to all tokens
        return out
