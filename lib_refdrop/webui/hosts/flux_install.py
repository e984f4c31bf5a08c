"""RefDrop on a Flux model in either host: the pass context, the run's patch, and the blocks of a clone.

The engine (``run.py``) plans a pass exactly as for a U-Net; only where its patch is called differs: inside every
block's joint attention, on the image tokens (``dit/guide.py``), instead of on attn1 layers. Each host has its own
way to the blocks (``flux_forge.py``: object patches; ``flux_reforge.py``: ``patches_replace["dit"]``), both on a
clone the pass owns, so nothing is left on the model the host gave once the generation is over.
"""

from __future__ import annotations

import dataclasses

from ...attn.patches import make_failing_patch
from ...attn.trajectory import CONDITIONING_KEYS
from ...dit.guide import FluxRefDrop
from ...dit.layers import layer_widths_of
from ...errors import RefDropError
from ...reference.profiles import get_profile
from . import flux_forge, flux_reforge
from .model_function import install_model_function
from .reporting import make_internal_error_patch

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


def unsupported(settings, profile: str = "") -> str | None:
    """What a Flux pass cannot do (yet), or None; ``profile``: the Save's storage profile
    (``RefDropRun.save_profile``)."""
    if settings.saving:
        problem = _profile_problem(settings.profile or profile)
        if problem:
            return problem
    if settings.saving and settings.save_from == "image":
        return ("RefDrop: a Save from an image does not work with Flux models yet; save a reference from a "
                "generation instead")
    if settings.using and any(slot.source == "image" and slot.rfg != 0 for slot in settings.slots):
        return ("RefDrop: an image as the reference does not work with Flux models yet; use a saved reference or "
                "the first image of the batch")  # the pass would need Flux's own prompt conditioning
    return None


def _profile_problem(name: str) -> str | None:
    """A profile that keeps each layer's input cannot work: a Flux block's K also depends on the conditioning
    vector and the positions, so it cannot be projected again from the input alone. A trajectory can, once it keeps
    the distilled guidance Flux is evaluated with (without it the reference would be evaluated wrongly)."""
    keep = getattr(get_profile(name), "keep", "kv")
    if keep == "input":
        return (f"RefDrop: the storage profile '{name}' keeps each layer's input, which does not work with Flux "
                "models; choose exact, balanced or compact")
    if keep == "trajectory" and "guidance" not in CONDITIONING_KEYS:
        return (f"RefDrop: the storage profile '{name}' does not keep Flux's guidance yet; choose exact, balanced "
                "or compact")
    return None


def install(host, p, run=None, failing_patch=None) -> None:
    """RefDrop's part in the pass on ``p``: the run's patch on every block of a clone of the Flux model (or
    ``failing_patch``, which stops the generation at the first block); nothing at all when the run changes nothing
    (c = 0: a plain generation, exactly)."""
    adapter = ADAPTERS[host.name]
    unet = p.sd_model.forge_objects.unet
    dit = FluxRefDrop(None, host.attention, adapter.flux_ops(),
                      own_needed=not (run is not None and run.settings.saving))
    wrapper = None
    if run is not None:
        dit.patch = _plan(host, p, run, dit)
        wrapper = run.model_wrapper
    else:
        dit.patch = failing_patch
    if dit.patch is None:  # c = 0 (an image's pass comes with a patch, and Flux refuses images anyway)
        return
    earlier = adapter.earlier_block_patches(unet)
    if earlier:
        dit.patch = make_failing_patch(f"RefDrop: another extension already replaces blocks of this Flux model "
                                       f"({', '.join(earlier[:3])}); RefDrop cannot run together with it")
    patched = unet.clone()
    adapter.install_blocks(patched, dit)
    install_model_function(patched, dit.model_function(wrapper), host.complete_extra_call)
    p.sd_model.forge_objects.unet = patched


def _plan(host, p, run, dit):
    try:
        problem = unsupported(run.settings, run.save_profile("flux"))
        if problem:
            return make_failing_patch(problem)
        ctx = dataclasses.replace(host.pass_context(p), family=FAMILY, inner=dit.inner,
                                  layer_widths=layer_widths_of(diffusion_model(p)))
        return run.patch_for_pass(ctx)
    except RefDropError as exc:  # a problem the user can fix (an unknown profile): stops the generation with it
        return make_failing_patch(str(exc))
    except Exception as exc:  # noqa: BLE001 - anything raised here would be swallowed by the host: fail visibly
        return make_internal_error_patch(exc)
