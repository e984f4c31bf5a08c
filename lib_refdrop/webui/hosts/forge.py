"""Forge family (lllyasviel/stable-diffusion-webui-forge, reForge ``newmain_newforge``): the ``backend`` package."""

from __future__ import annotations

from .common import importable
from .host import Host


def available() -> bool:
    return importable("backend.attention")


def host() -> Host:
    from backend.attention import attention_function  # chosen once, when the host imports it

    def forge_attention(q, k, v, extra_options):
        return attention_function(q, k, v, extra_options["n_heads"])

    # KModel keeps the schedule on ``predictor``; webui.py _handle_exception puts str(exc) under "message"
    return Host(name="forge", attention=forge_attention, schedule_attribute="predictor", error_message_key="message")
