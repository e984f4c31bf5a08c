"""What RefDrop reads off a ComfyUI ``ModelPatcher``: the model family, the attn1 layer keys, the schedule, the kernels.

Read in ComfyUI 0.3.64 (``comfy/model_patcher.py``, ``comfy/supported_models.py``, ``comfy/ldm/modules/attention.py``,
``comfy/ldm/flux``, ``comfy/ldm/wan``). ComfyUI modules are imported inside the functions that need them, never at
import time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..dit.blocks import FluxOps
from ..dit.wan import WanOps
from ..errors import RefDropError
from ..patcher import dit_blocks
from ..patcher.unet_layers import attn1_layer_keys

# ``model.model_config`` class (or a base class of it) -> RefDrop's family (families.LABELS). ComfyUI's SDXL refiner,
# SD3 and the video models have other layers: they stay "unknown" (checked layer by layer), except DiT families.
CONFIG_FAMILIES = {"SD15": "sd15", "SD20": "sd2", "SDXL": "sdxl", "SD3": "sd3", "Flux": "flux"}


def family_of(patcher) -> str:
    """The family of the model ``patcher`` patches: a DiT (Flux, Chroma, Qwen-Image, Wan) by its blocks, else from its
    ``model_config`` class and that class's bases."""
    dit = dit_blocks.dit_family(diffusion_model(patcher))
    if dit:
        return dit
    config = getattr(getattr(patcher, "model", None), "model_config", None)
    for cls in type(config).__mro__:
        if cls.__name__ in CONFIG_FAMILIES:
            return CONFIG_FAMILIES[cls.__name__]
    return "unknown"


def diffusion_model(patcher):
    return patcher.model.diffusion_model


def unet_keys(patcher) -> list[tuple[str, int, int]]:
    """The ``(block_name, number, transformer_index)`` of every attn1 layer; RefDropError when there is none."""
    keys = attn1_layer_keys(diffusion_model(patcher))
    if not keys:
        raise RefDropError(f"RefDrop: this model ({type(diffusion_model(patcher)).__name__}) has no U-Net "
                           "self-attention layers and is not a Flux, Chroma, Qwen-Image or Wan model; RefDrop "
                           "cannot guide it")
    return keys


def percent_to_sigma(patcher) -> Callable[[float], float]:
    """The run's schedule: ``get_model_object`` applies object patches (ModelSamplingDiscrete and the like)."""
    schedule = patcher.get_model_object("model_sampling")
    return lambda percent: float(schedule.percent_to_sigma(float(percent)))


def host_attention() -> Callable:
    """ComfyUI's attn1 kernel as ``(q, k, v, extra_options) -> out``, called as ``CrossAttention.forward`` calls it
    (the layer's precision; ``transformer_options`` where the installed ComfyUI passes them, so an attention override
    another pack installed applies to RefDrop's calls too)."""
    from comfy.ldm.modules import attention as host

    takes_options = hasattr(host, "wrap_attn")  # 0.3.6x: every kernel accepts transformer_options=

    def comfy_attention(q, k, v, extra_options):
        options = extra_options.get(ORIGINAL_OPTIONS, extra_options)
        kwargs = {"transformer_options": options} if takes_options else {}
        return host.optimized_attention(q, k, v, extra_options["n_heads"],
                                        attn_precision=extra_options.get("attn_precision"), **kwargs)

    return comfy_attention


# Where a relabelled ``extra_options`` (chunks.py) keeps the host's own dict: what the kernel and an earlier patch see.
ORIGINAL_OPTIONS = "refdrop_host_options"


def flux_ops() -> FluxOps:
    """ComfyUI's own pieces of a Flux block (``comfy/ldm/flux/layers.py``, ``math.py``): its ``apply_mod`` and its
    attention kernel. Its ``attention`` ropes q and k as ``pe[..., 0] * x0 + pe[..., 1] * x1`` (``.type_as(v)``),
    which is ``dit/blocks.py``'s ``apply_rope``; so RefDrop's recomputation of a block is the model's, bit for bit
    (checked in 0.3.64: a Save's latents equal plain ones)."""
    from comfy.ldm.modules.attention import optimized_attention

    def joint_attention(q, k, v, attn_mask):
        return optimized_attention(q, k, v, q.shape[1], skip_reshape=True, mask=attn_mask)

    def modulate(x, shift, scale):  # apply_mod(x, 1 + scale, shift) with modulation_dims None
        return torch.addcmul(shift, x, 1 + scale)

    return FluxOps(joint_attention=joint_attention, modulate=modulate)


def wan_ops() -> WanOps:
    """ComfyUI's pieces of a Wan block (``comfy/ldm/wan/model.py``, since 2025-08-23): ``addcmul`` to modulate and for
    the gated residuals, its ``apply_rope1`` on q and k, and ``transformer_options`` handed to the cross-attention."""
    from comfy.ldm.wan import model as wan

    def rope(q, k, freqs):
        return wan.apply_rope1(q, freqs), wan.apply_rope1(k, freqs)

    def modulate(x, shift, scale):
        return torch.addcmul(shift, x, 1 + scale)

    def gated_add(x, gate, y):
        return torch.addcmul(x, y, gate)

    return WanOps(modulate=modulate, gated_add=gated_add, rope=rope, cross_options=True)


def check_flux_blocks(patcher) -> None:
    """RefDrop recomputes each block in the order of the reference design; a model whose double blocks attend
    image-then-text (``flipped_img_txt``) is refused by name."""
    model = diffusion_model(patcher)
    if any(getattr(block, "flipped_img_txt", False) for block in getattr(model, "double_blocks", ())):
        raise RefDropError("RefDrop: this Flux-type model attends image tokens before text tokens "
                           "(flipped_img_txt); RefDrop supports Flux dev/schnell-style blocks only")
