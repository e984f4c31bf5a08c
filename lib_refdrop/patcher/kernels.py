"""The attention kernels of the ModelPatcher hosts, as RefDrop calls them: ``(q, k, v, extra_options) -> out`` on
attn1 layers, and the ``FluxOps`` a Flux block is computed with (``dit/blocks.py``).

ComfyUI and reForge share one kernel module (``comfy.ldm.modules.attention`` and its copy
``ldm_patched.ldm.modules.attention``: ``optimized_attention``); Forge has its own (``backend.attention``:
``attention_function``). Each is imported when asked for, so this package imports without a host.
"""

from __future__ import annotations

import importlib

import torch

from ..attn.patches import Attention
from ..dit.blocks import FluxOps

LDM_PATCHED = "ldm_patched.ldm.modules.attention"  # reForge; ComfyUI: "comfy.ldm.modules.attention"


def optimized_attention(module: str = LDM_PATCHED) -> Attention:
    """``optimized_attention`` of ``module`` (chosen once, when the host imports it) with the layer's precision, as
    the host's own call passes it."""
    kernel = importlib.import_module(module).optimized_attention

    def reforge_attention(q, k, v, extra_options):
        return kernel(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))

    return reforge_attention


def backend_attention() -> Attention:
    """Forge's ``attention_function`` (chosen once, when the host imports it)."""
    from backend.attention import attention_function

    def forge_attention(q, k, v, extra_options):
        return attention_function(q, k, v, extra_options["n_heads"])

    return forge_attention


def optimized_flux_ops(module: str = LDM_PATCHED) -> FluxOps:
    kernel = importlib.import_module(module).optimized_attention  # what the host's flux ``attention`` calls

    def joint_attention(q, k, v, attn_mask):
        return kernel(q, k, v, q.shape[1], skip_reshape=True, mask=attn_mask)

    def modulate(x, shift, scale):  # ``apply_mod`` in ldm_patched/ldm/flux/layers.py
        return torch.addcmul(shift, x, 1 + scale)

    return FluxOps(joint_attention=joint_attention, modulate=modulate)


def backend_flux_ops() -> FluxOps:
    from backend.attention import attention_function  # the kernel Forge's flux ``attention`` calls

    def joint_attention(q, k, v, attn_mask):
        return attention_function(q, k, v, q.shape[1], mask=attn_mask, skip_reshape=True)

    return FluxOps(joint_attention=joint_attention)
