"""Forge family (lllyasviel/stable-diffusion-webui-forge, reForge ``newmain_newforge``): the ``backend`` package."""

from __future__ import annotations

import torch

from ...patcher import kernels
from .common import importable
from .host import Host


def available() -> bool:
    return importable("backend.attention")


def host() -> Host:
    # KModel keeps the schedule on ``predictor``; webui.py _handle_exception puts str(exc) under "message"
    return Host(name="forge", attention=kernels.backend_attention(), flux_ops=kernels.backend_flux_ops,
                schedule_attribute="predictor", error_message_key="message", complete_extra_call=with_cond_marks,
                wan_ops=kernels.backend_wan_ops)


def with_cond_marks(options: dict) -> dict:
    """``options`` with the keys Forge's ``calc_cond_uncond_batch`` derives from ``cond_or_uncond`` and ``sigmas``
    (``compute_cond_mark``, ``compute_cond_indices`` in ``backend/sampling/sampling_function.py``; read by Forge's
    reference, StyleAlign, IP-Adapter and ControlNet weighting) redone for this call's rows: ``cond_or_uncond`` has
    one entry per chunk, ``sigmas`` one per row of a chunk."""
    chunks, sigmas = options.get("cond_or_uncond"), options.get("sigmas")
    if chunks is None or not torch.is_tensor(sigmas):
        return options
    per_chunk = int(sigmas.shape[0])
    marks = [float(chunk) for chunk in chunks for _ in range(per_chunk)]
    rows = [(chunk, row) for index, chunk in enumerate(chunks)
            for row in range(index * per_chunk, (index + 1) * per_chunk)]
    return {
        **options,
        "cond_mark": torch.tensor(marks).to(sigmas),
        "cond_indices": [row for chunk, row in rows if chunk == 0],
        "uncond_indices": [row for chunk, row in rows if chunk != 0],
    }
