"""The attention kernels of the ModelPatcher hosts, as RefDrop calls them: ``(q, k, v, extra_options) -> out`` on
attn1 layers, the ``FluxOps`` a Flux or Chroma block is computed with (``dit/blocks.py``) and the ``WanOps`` of a Wan
block (``dit/wan.py``; reForge's are the design's, ``WanOps()``).

ComfyUI and reForge share one kernel module (``comfy.ldm.modules.attention`` and its copy
``ldm_patched.ldm.modules.attention``: ``optimized_attention``); Forge has its own (``backend.attention``:
``attention_function``). Each is imported when asked for, so this package imports without a host.
"""

from __future__ import annotations

import importlib
import inspect

import torch

from ..attn.patches import Attention
from ..dit.blocks import FluxOps
from ..dit.wan import WanOps

LDM_PATCHED = "ldm_patched.ldm.modules.attention"  # reForge; ComfyUI: "comfy.ldm.modules.attention"


def takes_keyword(kernel, name: str) -> bool:
    """Whether ``kernel`` accepts the keyword ``name`` (or any keyword): read from its signature, since kernels of
    one name differ between hosts (Forge Classic's ``(q, k, v, heads, mask=None)`` has no ``attn_precision``)."""
    try:
        parameters = inspect.signature(kernel).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass only what every kernel takes
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def optimized_attention(module: str = LDM_PATCHED) -> Attention:
    """``optimized_attention`` of ``module`` (chosen once, when the host imports it), with the layer's precision
    where the kernel takes one, as the host's own call passes it."""
    kernel = importlib.import_module(module).optimized_attention
    if not takes_keyword(kernel, "attn_precision"):
        def classic_attention(q, k, v, extra_options):
            return kernel(q, k, v, extra_options["n_heads"])

        return classic_attention

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
    """Forge's pieces of a Flux (and Chroma) block. Forge main computes them as the reference design does; Forge Neo's
    ``backend/nn/flux.py`` is ComfyUI's code: it modulates with its ``apply_mod`` (one ``addcmul``) and ropes with
    ``apply_rope`` (comfy_kitchen's, whose kernel depends on the device), which RefDrop then calls too, as read from
    that module."""
    from backend.attention import attention_function  # the kernel Forge's flux ``attention`` calls

    def joint_attention(q, k, v, attn_mask):
        return attention_function(q, k, v, q.shape[1], mask=attn_mask, skip_reshape=True)

    blocks = _imported("backend.nn.flux")
    apply_mod = getattr(blocks, "apply_mod", None)
    if apply_mod is None:  # Forge main
        return FluxOps(joint_attention=joint_attention)
    apply_rope = blocks.apply_rope

    def modulate(x, shift, scale):
        return apply_mod(x, 1 + scale, shift)

    def rope(q, k, pe):
        return (q, k) if pe is None else apply_rope(q, k, pe)

    return FluxOps(joint_attention=joint_attention, modulate=modulate, rope=rope)


def backend_wan_ops() -> WanOps:
    """Forge Neo's pieces of a Wan block (``backend/nn/wan.py``): the design's ``*`` and ``+``, and ``apply_rope1``
    (comfy_kitchen's, whose kernel depends on the device) on q and k, as read from that module. Forge main has no
    Wan."""
    blocks = _imported("backend.nn.wan")
    if blocks is None:
        return WanOps()
    apply_rope1 = blocks.apply_rope1

    def rope(q, k, freqs):
        return apply_rope1(q, freqs), apply_rope1(k, freqs)

    return WanOps(rope=rope)


def _imported(module: str):
    """``module``, or None where this host has none (a host without Flux; the test stand-ins)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise
