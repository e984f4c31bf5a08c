"""reForge main family (Panchovix/stable-diffusion-webui-reForge ``main``, ``dev``, ``dev2``, ...: ``ldm_patched``)."""

from __future__ import annotations

from .common import importable

NAME = "reforge"
# modules/api/api.py handle_exception puts str(exc) under "errors"
API_ERROR_MESSAGE_KEY = "errors"


def available() -> bool:
    return importable("ldm_patched.ldm.modules.attention")


def attention():
    """The host kernel as ``(q, k, v, extra_options) -> out``, with the layer's attention precision."""
    from ldm_patched.ldm.modules.attention import optimized_attention

    def reforge_attention(q, k, v, extra_options):
        precision = extra_options.get("attn_precision")
        return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=precision)

    return reforge_attention
