"""RefDrop on a Flux model in either host: the pass context, the run's patch, and the blocks of a clone.

The engine (``run.py``) plans a pass exactly as for a U-Net; only where its patch is called differs: inside every
block's joint attention, on the image tokens (``dit/guide.py``), instead of on attn1 layers. Each host has its own
way to the blocks (``flux_forge.py``: object patches; ``flux_reforge.py``: ``patches_replace["dit"]``), both on a
clone the pass owns, so nothing is left on the model the host gave once the generation is over.
"""

from __future__ import annotations

import dataclasses

from ...run import failing_pass, failing_patch
from . import flux_forge, flux_reforge
from .model_function import install_model_function

FAMILY = "flux"
# the class of the diffusion model: reForge ``ldm_patched.ldm.flux.model.Flux`` (dev, schnell, their fine-tunes,
# Kontext), Forge ``backend.nn.flux.IntegratedFluxTransformer2DModel``
FLUX_CLASSES = ("Flux", "IntegratedFluxTransformer2DModel")
ADAPTERS = {"forge": flux_forge, "reforge": flux_reforge}


def diffusion_model(p):
    unet = p.sd_model.forge_objects.unet
    return getattr(getattr(unet, "model", None), "diffusion_model", None)


def is_flux(p) -> bool:
    """Whether the pass on ``p`` runs a Flux model (double- and single-stream blocks), not a U-Net."""
    model = diffusion_model(p)
    return (type(model).__name__ in FLUX_CLASSES and hasattr(model, "double_blocks")
            and hasattr(model, "single_blocks"))


def install(host, p, run=None, failing=None) -> None:
    """RefDrop's part in the pass on ``p``: the run's patches on every block of a clone of the Flux model (or
    ``failing``, which stops the generation at the first block); nothing at all when the run changes nothing
    (c = 0: a plain generation, exactly)."""
    adapter = ADAPTERS[host.name]
    unet = p.sd_model.forge_objects.unet
    ops = adapter.flux_ops()
    if failing is None:
        try:
            ctx = dataclasses.replace(host.pass_context(p), family=FAMILY, dit_ops=ops,
                                      earlier_blocks=tuple(adapter.earlier_block_patches(unet)))
            patches = run.for_pass(ctx)
        except Exception as exc:  # noqa: BLE001 - anything raised here would be swallowed by the host: fail visibly
            failing = failing_patch(exc)
    if failing is not None:
        patches = failing_pass(failing, host.attention, ops)
    if patches.empty:
        return
    patched = unet.clone()
    adapter.install_blocks(patched, patches.blocks)
    install_model_function(patched, patches.model_wrapper, host.complete_extra_call)
    p.sd_model.forge_objects.unet = patched

