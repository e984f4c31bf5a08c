"""Forge family (lllyasviel/stable-diffusion-webui-forge, reForge ``main-old`` and ``newmain_newforge``)."""

from __future__ import annotations

from .common import importable

NAME = "forge"
# webui.py _handle_exception, the app's handler for Exception, puts str(exc) under "message"
API_ERROR_MESSAGE_KEY = "message"


def available() -> bool:
    return importable("backend.attention")


def attention():
    """The host kernel as ``(q, k, v, extra_options) -> out`` (looked up once: the host picks it at import)."""
    from backend.attention import attention_function

    def forge_attention(q, k, v, extra_options):
        return attention_function(q, k, v, extra_options["n_heads"])

    return forge_attention
