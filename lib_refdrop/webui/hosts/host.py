"""The running WebUI as RefDrop sees it: one ``Host`` value, made by the adapter of its family (``forge.py`` or
``reforge.py``) and detected once (``hosts.detect``).

The fields hold what differs between the families (docs/hosts.md, "Where Forge and reForge differ"); the methods do
what is the same on both, through the host objects every Forge-derived WebUI shares: ``p`` (its
``sd_model.forge_objects.unet`` patcher, the model flags, the seeds and prompts), ``Processed`` and
``modules.shared.state``. What only speaks to the patcher is in ``lib_refdrop/patcher/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...attn.patches import Attention, Patch
from ...dit.blocks import FluxOps
from ...dit.layers import layer_widths_of as dit_layer_widths_of
from ...dit.layers import projections_of as dit_projections_of
from ...dit.wan import WanOps
from ...errors import RefDropError
from ...patcher import dit_blocks
from ...patcher.chain import CompleteExtraCall, chain, earlier_attn1_patches, no_completion
from ...patcher.install import install
from ...patcher.unet_layers import layer_widths_of, projections_of
from ...run import PassContext, PassPatches, RefDropRun, failing_pass, failing_patch
from .image_pass import host_encoders, known_pass_size
from .reporting import register_error_handler

_FAMILY_FLAGS = (("is_sdxl", "sdxl"), ("is_sd3", "sd3"), ("is_sd2", "sd2"), ("is_sd1", "sd15"))


@dataclass(frozen=True)
class Host:
    name: str                 # "forge" or "reforge"
    attention: Attention      # the host kernel as (q, k, v, extra_options) -> out, looked up once
    flux_ops: Callable[[], FluxOps]  # the host's kernels inside a Flux or Chroma block (patcher/kernels.py)
    schedule_attribute: str   # the attribute of ``unet.model`` that has ``percent_to_sigma``
    error_message_key: str    # where the host's API error body puts ``str(exc)``
    # the transformer_options keys the host derives from cond_or_uncond and sigmas, redone for a call RefDrop makes
    complete_extra_call: CompleteExtraCall = no_completion
    wan_ops: Callable[[], WanOps] = WanOps  # the host's arithmetic in a Wan block (default: the design's, reForge's)

    def percent_to_sigma(self, unet, percent: float) -> float:
        """The sigma at ``percent`` (0..1) of the schedule of the model ``unet`` patches."""
        schedule = getattr(unet.model, self.schedule_attribute)
        return float(schedule.percent_to_sigma(float(percent)))

    def dit_ops(self, unet) -> FluxOps | WanOps | None:
        """The host's kernels inside the blocks of the model ``unet`` patches where it is a DiT model (Flux, Chroma,
        Qwen-Image, Wan), where RefDrop works in each block's attention of the image tokens (docs/flux.md,
        docs/dit.md); None for a U-Net."""
        return dit_blocks.host_block_ops(dit_blocks.diffusion_model(unet), self.flux_ops, self.wan_ops)

    def pass_context(self, p, dit_ops: FluxOps | WanOps | None = None) -> PassContext:
        """What RefDrop needs to know about the sampling pass that is about to start on ``p``; a RefDropError for a
        model RefDrop cannot work in."""
        unet = p.sd_model.forge_objects.unet
        model = dit_blocks.diffusion_model(unet)
        problem = dit_blocks.unsupported(model)
        if problem:
            raise RefDropError(problem)
        return PassContext(
            family=dit_blocks.dit_family(model) if dit_ops is not None else family_of(p.sd_model),
            is_hr_pass=bool(getattr(p, "is_hr_pass", False)),
            percent_to_sigma=lambda percent: self.percent_to_sigma(unet, percent),
            attention=self.attention,
            inner=chain(earlier_attn1_patches(unet), self.attention),
            seed=(getattr(p, "all_seeds", None) or [None])[0] or getattr(p, "seed", None),
            projections=dit_projections_of(model, dit_ops) if dit_ops is not None else projections_of(unet),
            layer_widths=dit_layer_widths_of(model) if dit_ops is not None else layer_widths_of(unet),
            dit_ops=dit_ops,
            earlier_blocks=tuple(dit_blocks.earlier_block_patches(unet)) if dit_ops is not None else (),
            **host_extras(p),
        )

    def pass_patches(self, p, run: RefDropRun | None, failing: Patch | None = None) -> PassPatches:
        """The run's patches for this pass, or ``failing`` (a problem with the settings) where they would go. A
        problem found while planning, a bug too, becomes a failing patch: the host would swallow an exception
        raised in the hook (docs/hosts.md, "Errors")."""
        dit_ops = self.dit_ops(p.sd_model.forge_objects.unet)
        if failing is None:
            try:
                return run.for_pass(self.pass_context(p, dit_ops))
            except Exception as exc:  # noqa: BLE001 - anything raised here would be swallowed: fail visibly
                failing = failing_patch(exc)
        return failing_pass(failing, self.attention, dit_ops)

    def install(self, p, patches: PassPatches) -> None:
        """``patches`` on a clone of this pass's patcher (``patcher/install.py``); the patcher it came from is
        unchanged (the host resets ``forge_objects`` before every pass, so nothing leaks into the next one)."""
        forge_objects = p.sd_model.forge_objects
        forge_objects.unet = install(forge_objects.unet, patches, self.complete_extra_call)

    def interrupted(self) -> bool:
        """Whether the user interrupted the generation that is ending (postprocess still runs then)."""
        from modules import shared

        return bool(getattr(getattr(shared, "state", None), "interrupted", False))

    def register_error_reporting(self, app) -> None:
        """Answer a ``RefDropError`` that stops an API generation with the host's body and one console line."""
        register_error_handler(app, self.error_message_key)


def host_extras(p) -> dict:
    """What a reference pass needs from the host for the pass on ``p``: the image and prompt encoders
    (``image_pass.py``), where this batch is in the batch count, and the pass's image size."""
    return {
        **host_encoders(p),
        "batch_index": int(getattr(p, "iteration", 0) or 0),
        "batch_count": int(getattr(p, "n_iter", 1) or 1),
        "size": known_pass_size(p),
    }


def family_of(sd_model) -> str:
    """The model family (``families.LABELS``) from the flags both hosts set on ``p.sd_model``."""
    for flag, family in _FAMILY_FLAGS:
        if getattr(sd_model, flag, False) is True:
            return family
    return "unknown"


def generation_info(p) -> dict:
    """What a reference remembers about the generation that made it (the manifest's ``generation``)."""
    seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", None)]
    prompts = getattr(p, "all_prompts", None) or [getattr(p, "prompt", "")]
    negatives = getattr(p, "all_negative_prompts", None) or [getattr(p, "negative_prompt", "")]
    return {
        "width": getattr(p, "width", None),
        "height": getattr(p, "height", None),
        "steps": getattr(p, "steps", None),
        "sampler_name": getattr(p, "sampler_name", None),
        "scheduler": getattr(p, "scheduler", None),
        "seed": seeds[0],
        "prompt": prompts[0],
        "negative_prompt": negatives[0],
        "cfg_scale": getattr(p, "cfg_scale", None),
        "denoising_strength": getattr(p, "denoising_strength", None),
        "model_name": getattr(p, "sd_model_name", None),
        "model_hash": getattr(p, "sd_model_hash", None),
    }


def first_image(processed):
    """The generation's first image, for the reference's preview (a batch's grid comes first when there is one)."""
    images = getattr(processed, "images", None) or []
    first = getattr(processed, "index_of_first_image", 0)
    return images[first] if len(images) > first else (images[0] if images else None)

