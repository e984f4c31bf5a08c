"""RefDrop on a diffusers ``UNet2DConditionModel``: the library's own host, in the shape of diffusers' hooks.

``apply_refdrop(unet, patches)`` puts a processor on every self-attention (attn1) module that calls a sampling pass's
``PassPatches`` (lib_refdrop/run.py) the way ComfyUI, reForge and Forge call an attn1 replace patch: ``q = to_q(n)``,
``k = to_k(n)``, ``v = to_v(n)`` (heads not split), ``out = patch(q, k, v, extra_options)``, then ``to_out``, with
the hosts' ``extra_options`` (docs/hosts.md). Cross-attention (attn2) keeps its own processor and never reaches a
patch, as on the hosts. ``remove_refdrop(unet)`` puts the original processor objects back: the U-Net is then plain
diffusers again, exactly. Without a patch (c = 0) the processor computes what diffusers' ``AttnProcessor2_0`` does.

The hosts address attn1 layers by the ldm U-Net's numbering (``("input", 4)``, ``("middle", 0)``) and the index of
the transformer block; diffusers numbers the same modules ``down_blocks.1.attentions.0``: ``layer_map`` translates,
so a reference saved here names its layers as one saved in a WebUI or ComfyUI does.

A U-Net call does not say which of its rows are cond and which uncond, nor its sigma: the caller says so per call,
``with hook.call(cond_or_uncond=[1, 0], sigmas=sigmas): unet(...)``, or through ``call_model``, which also runs a
pass's model function wrapper (image references, trajectories) with the hosts' arguments.

diffusers itself is never imported here (the WebUIs and ComfyUI do not ship it): the processor only uses the
attributes of the modules it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attn.patches import Patch
from .attn.sources import LinearKV
from .run import PassPatches
from .standalone import PassContext, context

__all__ = ["LayerInfo", "RefDropConfig", "RefDropHook", "RefDropState", "apply_refdrop", "attention", "call_model",
           "layer_map", "remove_refdrop", "sdpa_attention"]

HOOK_ATTRIBUTE = "_refdrop_hook"  # where an applied hook lives on the U-Net (diffusers keeps its registry likewise)
InputPatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], tuple]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, mask: torch.Tensor | None = None,
                   attn_precision=None, skip_reshape: bool = False, skip_output_reshape: bool = False) -> torch.Tensor:
    """Attention with the hosts' kernel signature (Forge ``attention_function``, reForge/ComfyUI
    ``optimized_attention``; ``attn_precision`` ignored), computed as diffusers' ``AttnProcessor2_0`` does.

    ``q``: ``[b, nq, heads*d]``, ``k``/``v``: ``[b, nk, heads*d]`` (``[b, heads, n, d]`` with ``skip_reshape``).
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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """What attn1 computes without RefDrop, as an attn1 patch ``(q, k, v, extra_options) -> out``: the
    ``attention`` of a pass's ``PassContext``."""
    return sdpa_attention(q, k, v, extra_options["n_heads"])


# -- the layers, as the hosts address them --------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerInfo:
    """One self-attention (attn1) layer as the hosts address it."""

    name: str  # diffusers module path of the attn1 module
    block: tuple[str, int]  # ldm addressing: ("input" | "middle" | "output", n)
    block_index: int  # transformer block index inside its Transformer2DModel
    transformer_index: int  # running count of Transformer2DModel modules in one forward
    n_heads: int
    dim_head: int
    level: int  # resolution level: tokens = (H / 2**level) * (W / 2**level) for latent H x W
    transformer_name: str  # diffusers module path of the enclosing Transformer2DModel

    @property
    def key(self) -> tuple[str, int, int]:
        """The 3-tuple key of ``set_model_attn1_replace(patch, block_name, number, transformer_index)``."""
        return (self.block[0], self.block[1], self.block_index)

    @property
    def layer_id(self) -> str:
        """RefDrop's layer id (``"input4.1"``), as a reference names the layer."""
        return f"{self.block[0]}{self.block[1]}.{self.block_index}"


def _transformer_layers(prefix: str, transformer, block, t_index: int, level: int) -> list[LayerInfo]:
    layers = []
    for k, tb in enumerate(transformer.transformer_blocks):
        attn = tb.attn1
        heads = attn.heads
        layers.append(LayerInfo(
            name=f"{prefix}.transformer_blocks.{k}.attn1", block=block, block_index=k, transformer_index=t_index,
            n_heads=heads, dim_head=attn.to_q.out_features // heads, level=level, transformer_name=prefix,
        ))
    return layers


def layer_map(unet) -> list[LayerInfo]:
    """All attn1 layers of a ``UNet2DConditionModel`` in execution order, with the hosts' addressing.

    ldm numbering (layers_per_block L, 2 for SD1.5 and SDXL): ``down_blocks.i.attentions.j`` -> input ``1+(L+1)*i+j``
    (each level has L resnets plus a downsampler), ``mid_block`` -> middle 0, ``up_blocks.i.attentions.j`` -> output
    ``(L+1)*i+j``.  ``transformer_index`` counts Transformer2DModels in that order.
    """
    lpb = unet.config.layers_per_block
    if not isinstance(lpb, int):
        raise ValueError("layer_map needs an int layers_per_block")
    n_levels = len(unet.down_blocks)
    layers: list[LayerInfo] = []
    t_index = 0
    for i, down in enumerate(unet.down_blocks):
        for j, tr in enumerate(getattr(down, "attentions", None) or []):
            layers += _transformer_layers(f"down_blocks.{i}.attentions.{j}", tr, ("input", 1 + (lpb + 1) * i + j),
                                          t_index, i)
            t_index += 1
    for j, tr in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        layers += _transformer_layers(f"mid_block.attentions.{j}", tr, ("middle", j), t_index, n_levels - 1)
        t_index += 1
    for i, up in enumerate(unet.up_blocks):
        for j, tr in enumerate(getattr(up, "attentions", None) or []):
            layers += _transformer_layers(f"up_blocks.{i}.attentions.{j}", tr, ("output", (lpb + 1) * i + j),
                                          t_index, n_levels - 1 - i)
            t_index += 1
    return layers


# -- Config -> State -> Hook -> apply_refdrop -----------------------------------------------------------------------

@dataclass
class RefDropConfig:
    """What RefDrop installs on a U-Net for one sampling pass; None: nothing of that kind.

    ``attn1``: replaces every attn1 layer's attention; ``attn1_input``: an ``attn1_patch``, run on each attn1 layer's
    input before the projections (a Save whose profile keeps it); ``model_wrapper``: ``wrapper(apply_model, args)``
    around every model call, which ``call_model`` runs (image references, trajectories).
    """

    attn1: Patch | None = None
    attn1_input: InputPatch | None = None
    model_wrapper: Callable | None = None

    @classmethod
    def from_pass(cls, patches: PassPatches) -> RefDropConfig:
        """A pass's ``PassPatches`` (``for_pass``); a DiT model's blocks are not a U-Net's."""
        if patches.blocks is not None:
            raise ValueError("a DiT model's block patches cannot be applied to a U-Net")
        return cls(patches.attn1, patches.attn1_input, patches.model_wrapper)


class RefDropState:
    """The U-Net call in progress, as an attn1 patch's ``extra_options`` describe it: set by ``RefDropHook.call``,
    the transformer count by the U-Net's own forward."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.cond_or_uncond: list[int] | None = None  # per chunk of rows: 1 uncond, 0 cond
        self.sigmas: torch.Tensor | None = None  # one per image
        self.options: dict = {}  # the call's transformer_options (a model function wrapper's keys)
        self.original_shape: list[int] | None = None  # the U-Net input's shape
        self.transformer_index = -1  # Transformer2DModels entered so far in this forward

    @property
    def in_call(self) -> bool:
        return self.cond_or_uncond is not None


class _Attn1Processor:
    """diffusers attention processor of one attn1 module; the residual and norm handling is AttnProcessor2_0's."""

    def __init__(self, hook: RefDropHook, layer: LayerInfo):
        self.hook = hook
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("RefDrop's attn1 processor expects self-attention without a mask")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        hidden_states = self.hook.attn1(attn, self.layer, hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class RefDropHook:
    """RefDrop installed on one U-Net: its attn1 processors, the forward hooks that count transformer blocks, the
    current ``config`` (the pass's patches) and ``state`` (the call in progress). Made by ``apply_refdrop``."""

    def __init__(self, config: RefDropConfig | None = None):
        self.config = config or RefDropConfig()
        self.state = RefDropState()
        self.unet = None
        self.layers: list[LayerInfo] = []
        self._originals: dict[str, object] = {}  # attn1 module path -> its processor before
        self._handles: list = []
        self._projections: dict[str, LinearKV] | None = None

    # -- install / remove --------------------------------------------------------------------------------------
    def install(self, unet) -> RefDropHook:
        if getattr(unet, HOOK_ATTRIBUTE, None) is not None:
            raise RuntimeError("RefDrop is already applied to this U-Net: remove_refdrop(unet) first")
        self.unet = unet
        self.layers = layer_map(unet)
        modules = dict(unet.named_modules())
        self._handles.append(unet.register_forward_pre_hook(self._new_forward, with_kwargs=True))
        for name in dict.fromkeys(layer.transformer_name for layer in self.layers):
            self._handles.append(modules[name].register_forward_pre_hook(self._transformer_entered, with_kwargs=True))
        for layer in self.layers:
            attn = modules[layer.name]
            self._originals[layer.name] = attn.processor
            attn.set_processor(_Attn1Processor(self, layer))
        setattr(unet, HOOK_ATTRIBUTE, self)
        return self

    def remove(self) -> None:
        """The original processors back, the hooks gone: the U-Net is plain diffusers again."""
        if self.unet is None or getattr(self.unet, HOOK_ATTRIBUTE, None) is not self:
            return
        modules = dict(self.unet.named_modules())
        for name, processor in self._originals.items():
            modules[name].set_processor(processor)
        self._originals.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        delattr(self.unet, HOOK_ATTRIBUTE)

    # -- one U-Net call ----------------------------------------------------------------------------------------
    @contextmanager
    def call(self, cond_or_uncond: list[int], sigmas: torch.Tensor,
             transformer_options: dict | None = None) -> Iterator[RefDropState]:
        """The U-Net calls inside describe their rows as ``cond_or_uncond`` (one flag per chunk of rows, 1 = uncond,
        in row order) with ``sigmas`` (one per image: rows = chunks x images) and ``transformer_options`` (keys
        copied into every ``extra_options``, as the hosts copy a model call's)."""
        state = self.state
        state.cond_or_uncond = list(cond_or_uncond)
        state.sigmas = sigmas.to(torch.float32)
        state.options = dict(transformer_options or {})
        try:
            yield state
        finally:
            state.reset()

    def forward(self, x: torch.Tensor, timestep, context: torch.Tensor, *, cond_or_uncond: list[int],
                sigmas: torch.Tensor, transformer_options: dict | None = None, **unet_kwargs) -> torch.Tensor:
        """``unet(x, timestep, encoder_hidden_states=context, **unet_kwargs).sample`` inside ``call``; ``x`` has
        ``len(cond_or_uncond) * len(sigmas)`` rows."""
        rows = x.shape[0]
        if rows != len(cond_or_uncond) * sigmas.shape[0] or context.shape[0] != rows:
            raise ValueError(f"rows {rows} != len(cond_or_uncond) {len(cond_or_uncond)} * B {sigmas.shape[0]}")
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(float(timestep))
        with self.call(cond_or_uncond, sigmas, transformer_options):
            return self.unet(x, timestep, encoder_hidden_states=context, **unet_kwargs).sample

    def _new_forward(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.state.original_shape = list(sample.shape)
        self.state.transformer_index = -1

    def _transformer_entered(self, module, args, kwargs) -> None:
        self.state.transformer_index += 1

    # -- attn1 -------------------------------------------------------------------------------------------------
    def patch_for(self, layer: LayerInfo) -> Patch | None:
        """The attn1 patch of ``layer`` (None: plain attention)."""
        return self.config.attn1

    def input_patches(self, layer: LayerInfo) -> list:
        """The attn1_patch chain of ``layer``, run on its input before the projections."""
        return [] if self.config.attn1_input is None else [self.config.attn1_input]

    def extra_options(self, layer: LayerInfo) -> dict:
        """A fresh ``extra_options`` for ``layer`` in the current call: the keys both WebUI hosts and ComfyUI send,
        in their order."""
        state = self.state
        if not state.in_call:
            raise RuntimeError("RefDrop: an attn1 patch ran outside RefDropHook.call(): which rows are cond and "
                               "which sigma is unknown")
        eo = dict(state.options)
        eo["cond_or_uncond"] = state.cond_or_uncond
        eo["sigmas"] = state.sigmas
        eo["original_shape"] = list(state.original_shape)
        eo["transformer_index"] = state.transformer_index
        eo["block"] = layer.block
        eo["block_index"] = layer.block_index
        eo["n_heads"] = layer.n_heads
        eo["dim_head"] = layer.dim_head
        return eo

    def attn1(self, attn, layer: LayerInfo, n: torch.Tensor) -> torch.Tensor:
        """``n``: the layer's normed input ``[rows, tokens, C]``; returns its attention output after ``to_out``."""
        return attn.to_out[1](attn.to_out[0](self.attend(attn, layer, n, n, n)))

    def attend(self, attn, layer: LayerInfo, q_in: torch.Tensor, context: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor:
        """The input patches, the projections and the patch (or plain attention), before ``to_out``."""
        input_patches = self.input_patches(layer)
        if input_patches:
            extra_options = self.extra_options(layer)
            for input_patch in input_patches:
                q_in, context, value = input_patch(q_in, context, value, extra_options)
        q, k, v = attn.to_q(q_in), attn.to_k(context), attn.to_v(value)
        patch = self.patch_for(layer)
        if patch is None:
            return sdpa_attention(q, k, v, layer.n_heads)
        out = patch(q, k, v, self.extra_options(layer))
        if not torch.is_tensor(out) or out.shape != q.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"attn1 patch at {layer.key} returned {got}, expected {tuple(q.shape)}")
        return out

    # -- what a pass's context needs of the model --------------------------------------------------------------
    def projections(self, lid: str) -> LinearKV:
        """``LinearKV(to_k, to_v)`` of the attn1 layer ``lid`` (``"input1.0"``), for a profile that keeps each
        layer's input; looked up once per layer, as the hosts do (a Use asks for every stored row)."""
        if self._projections is None:
            modules = dict(self.unet.named_modules())
            self._projections = {layer.layer_id: LinearKV(modules[layer.name].to_k, modules[layer.name].to_v)
                                 for layer in self.layers}
        try:
            return self._projections[lid]
        except KeyError:
            raise KeyError(f"no attn1 layer {lid}") from None

    def layer_width(self, lid: str) -> int | None:
        """The width (heads x head size) of attn1 layer ``lid``, None where the U-Net has none."""
        return next((layer.n_heads * layer.dim_head for layer in self.layers if layer.layer_id == lid), None)

    def context(self, family: str, percent_to_sigma: Callable[[float], float], seed: int | None = None,
                **kwargs) -> PassContext:
        """``standalone.context`` of a sampling pass on this U-Net: plain attention, and its layers' projections
        and widths (a Use checks a reference's layers against them before reading it)."""
        kwargs.setdefault("projections", self.projections)
        kwargs.setdefault("layer_widths", self.layer_width)
        return context(family, attention, percent_to_sigma, seed, **kwargs)


def apply_refdrop(unet, patches: PassPatches | RefDropConfig | None = None) -> RefDropHook:
    """RefDrop on every attn1 layer of the diffusers U-Net ``unet``, running ``patches`` (a pass's ``PassPatches``
    or a ``RefDropConfig``; None: plain until given). Applied again, it swaps in the next pass's patches and keeps
    the processors. Returns the hook: ``hook.call`` / ``hook.forward`` / ``call_model`` describe each call."""
    config = RefDropConfig.from_pass(patches) if isinstance(patches, PassPatches) else patches
    hook = getattr(unet, HOOK_ATTRIBUTE, None)
    if hook is None:
        return RefDropHook(config).install(unet)
    hook.config = config or RefDropConfig()
    return hook


def remove_refdrop(unet) -> None:
    """Undo ``apply_refdrop``: every attn1 module gets its original processor object back (nothing if none)."""
    hook = getattr(unet, HOOK_ATTRIBUTE, None)
    if hook is not None:
        hook.remove()


def call_model(hook: RefDropHook, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
               cond_or_uncond: list[int], sigma_to_t: Callable) -> torch.Tensor:
    """One model call of a k-diffusion sampler (eps prediction) on the noisy ``x`` (rows of every chunk) at
    ``sigma``, through the config's ``model_wrapper`` when it has one, with the hosts' wrapper arguments
    ``{"input": x, "timestep": sigma per row, "c": {"c_crossattn", "transformer_options"}, "cond_or_uncond"}``; the
    model scales the input itself (``1 / sqrt(sigma² + 1)``) and gets ``sigma_to_t(sigma)`` as its timestep.
    Returns eps."""

    def apply_model(x_in, timestep, c_crossattn, transformer_options, **_):
        s = timestep.reshape(-1)[0]
        c_in = 1.0 / (s ** 2 + 1.0) ** 0.5
        options = {k: v for k, v in transformer_options.items() if k not in ("cond_or_uncond", "sigmas")}
        return hook.forward(x_in * c_in, sigma_to_t(s), c_crossattn, cond_or_uncond=transformer_options[
            "cond_or_uncond"], sigmas=transformer_options["sigmas"], transformer_options=options)

    wrapper = hook.config.model_wrapper
    rows = x.shape[0]
    images = rows // len(cond_or_uncond)
    timestep = sigma.reshape(1).to(torch.float32).expand(rows).clone()
    sigmas = sigma.reshape(1).to(torch.float32).expand(images).clone()
    options = {"cond_or_uncond": list(cond_or_uncond), "sigmas": sigmas}
    c = {"c_crossattn": context, "transformer_options": options}
    if wrapper is None:
        return apply_model(x, timestep, **c)
    return wrapper(apply_model, {"input": x, "timestep": timestep, "c": c, "cond_or_uncond": list(cond_or_uncond)})
