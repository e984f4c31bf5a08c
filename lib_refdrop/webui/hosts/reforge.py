"""reForge main family (Panchovix/stable-diffusion-webui-reForge ``main``, ``dev``, ``dev2``, ...): ``ldm_patched``."""

from __future__ import annotations

import uuid

from ...patcher import kernels
from .common import importable
from .host import Host

# stands for the reference pass's rows in ``uuids``, where reForge puts one id per chunk (of the cond it came from)
REFERENCE_PASS_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "refdrop:reference-pass")


def available() -> bool:
    return importable(kernels.LDM_PATCHED)


def host() -> Host:
    # BaseModel keeps the schedule on ``model_sampling``; modules/api/api.py handle_exception puts str(exc) under
    # "errors"
    return Host(name="reforge", attention=kernels.optimized_attention(), flux_ops=kernels.optimized_flux_ops,
                schedule_attribute="model_sampling", error_message_key="errors", complete_extra_call=with_chunk_uuids)


def with_chunk_uuids(options: dict) -> dict:
    """``options`` with one ``uuids`` entry per chunk of this call, as reForge's ``_calc_cond_batch``
    (``ldm_patched/modules/samplers.py``) gives its own calls; the only key it derives per call besides
    ``cond_or_uncond`` and ``sigmas``."""
    chunks = options.get("cond_or_uncond")
    if chunks is None or "uuids" not in options:
        return options
    return {**options, "uuids": [REFERENCE_PASS_UUID] * len(chunks)}
