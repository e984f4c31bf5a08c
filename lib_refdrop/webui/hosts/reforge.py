"""reForge main family (Panchovix/stable-diffusion-webui-reForge ``main``, ``dev``, ``dev2``, ...): ``ldm_patched``."""

from __future__ import annotations

import uuid

from .common import importable
from .host import Host

# stands for the reference pass's rows in ``uuids``, where reForge puts one id per chunk (of the cond it came from)
REFERENCE_PASS_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "refdrop:reference-pass")


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
                error_message_key="errors", complete_extra_call=with_chunk_uuids)


def with_chunk_uuids(options: dict) -> dict:
    """``options`` with one ``uuids`` entry per chunk of this call, as reForge's ``_calc_cond_batch``
    (``ldm_patched/modules/samplers.py``) gives its own calls; the only key it derives per call besides
    ``cond_or_uncond`` and ``sigmas``."""
    chunks = options.get("cond_or_uncond")
    if chunks is None or "uuids" not in options:
        return options
    return {**options, "uuids": [REFERENCE_PASS_UUID] * len(chunks)}
