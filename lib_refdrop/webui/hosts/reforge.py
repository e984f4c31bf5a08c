"""reForge main family (Panchovix/stable-diffusion-webui-reForge ``main``, ``dev``, ``dev2``, ...): ``ldm_patched``."""

from __future__ import annotations

from .common import importable
from .host import Host


def available() -> bool:
    return importable("ldm_patched.ldm.modules.attention")


def host() -> Host:
    from ldm_patched.ldm.modules.attention import optimized_attention  # chosen once, when the host imports it

    def reforge_attention(q, k, v, extra_options):
        precision = extra_options.get("attn_precision")  # the layer's precision, as the host's own call passes it
        return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=precision)

    # BaseModel keeps the schedule on ``model_sampling``; modules/api/api.py handle_exception puts str(exc) under
    # "errors"
    return Host(name="reforge", attention=reforge_attention, schedule_attribute="model_sampling",
                error_message_key="errors")
