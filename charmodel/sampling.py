"""Generate with the character model through the library's diffusers host; RefDrop's Save and Use run on it unchanged.

The same calling convention as toymodel/sampling.py (the WebUI hosts' CFG batch layout, uncond chunk then cond
chunk, SD's sigmas, per-image seeds), on 32x32 pixels and the model's pose prompts. A storage profile that keeps
each layer's input gets what it needs from the host too: the attn1_patch a Save hands out, and each layer's own
``to_k``/``to_v`` for a Use.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from devmodel.sampling import SAMPLERS, model_call
from devmodel.schedule import DiscreteSchedule
from lib_refdrop.diffusers import RefDropConfig, RefDropHook, apply_refdrop, attention
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.standalone import PassContext, PassPatches, context, start_save, start_use

from .data import SIZE
from .model import WEIGHTS, PosePrompts, load

FAMILY = "char"
SCHEDULE = DiscreteSchedule()


def pass_context(seed: int, host: RefDropHook | None = None) -> PassContext:
    """The model's one sampling pass, for RefDrop (``seed``: the first image's); with ``host``, its layers'
    projections for a profile that keeps each layer's input (where the engine takes them)."""
    extra = {}
    if host is not None and "projections" in inspect.signature(context).parameters:
        extra["projections"] = host.projections
    return context(FAMILY, attention, SCHEDULE.percent_to_sigma, seed=seed, **extra)


@dataclass
class CharPipeline:
    """The trained model inside an attn1 host, with generation settings shared by every image."""

    host: RefDropHook
    prompts: PosePrompts
    steps: int = 8    # 8 and 12 steps gave the same classes on seeds 0..11; 8 keeps the measures affordable
    cfg: float = 3.0
    sampler: str = "euler"

    @classmethod
    def load(cls, weights: Path = WEIGHTS, **kwargs) -> CharPipeline:
        unet, prompts = load(weights)
        return cls(apply_refdrop(unet), prompts, **kwargs)

    @torch.no_grad()
    def generate(self, poses: list[str], seeds: list[int], patch=None, input_patch=None,
                 wrapper=None) -> torch.Tensor:
        """Images ``[B, 3, SIZE, SIZE]`` in [-1, 1], image i conditioned on ``poses[i]`` with noise from ``seeds[i]``.

        ``patch``: an attn1 replace patch installed on every attn1 layer like a host does (None = plain), or a Use's
        ``PassPatches`` (its attn1 patch and model function wrapper); ``input_patch``: an attn1_patch run before the
        projections (a Save that keeps each layer's input); ``wrapper``: a model function wrapper (a Save that keeps
        the latent trajectory).
        """
        if isinstance(patch, PassPatches):
            patch, wrapper = patch.attn1, patch.model_wrapper
        if len(poses) != len(seeds):
            raise ValueError("one pose per seed")
        gens = [torch.Generator().manual_seed(s) for s in seeds]

        def noise() -> torch.Tensor:
            return torch.cat([torch.randn((1, 3, SIZE, SIZE), generator=g) for g in gens])

        sigmas = SCHEDULE.get_sigmas(self.steps)
        cond = torch.cat([self.prompts.of(p) for p in poses])
        uncond = self.prompts.of(None).expand_as(cond)
        prompts = torch.cat([uncond, cond])
        self.host.config = RefDropConfig(patch, input_patch, wrapper)
        try:
            return SAMPLERS[self.sampler](self._denoiser(prompts), noise() * sigmas[0], sigmas, noise,
                                          lambda *_: None)
        finally:
            self.host.config = RefDropConfig()

    def _denoiser(self, prompts: torch.Tensor):
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            eps = model_call(self.host, torch.cat([x, x]), sigma, prompts, [1, 0])
            uncond, cond = eps[:b], eps[b:]
            return x - sigma * (uncond + (cond - uncond) * self.cfg)

        return denoise

    def save_reference(self, store: ReferenceStore, name: str, pose: str, seed: int,
                       profile: str = "") -> torch.Tensor:
        """Generate one image with RefDrop Save on; return it once the reference is on disk."""
        with start_save(store, name, pass_context(seed), profile=profile, overwrite=True) as save:
            image = self.generate([pose], [seed], save.patch, getattr(save, "input_patch", None), save.model_wrapper)
            save.finish({"pose": pose, "seed": seed, "width": SIZE, "height": SIZE}, to_pil(image[0]))
        return image[0]

    def use_patches(self, store: ReferenceStore, name: str, rfg: float, seed: int, **settings):
        """RefDrop Use's ``PassPatches`` at strength ``rfg`` (other settings by their names in lib_refdrop.params) for
        one generation, and the function that ends the Use (closes the reference)."""
        use = start_use(store, **settings, reference=name, rfg=rfg)
        return use.for_pass(pass_context(seed, self.host)), use.close

    def use_reference(self, store: ReferenceStore, name: str, rfg: float, poses: list[str], seeds: list[int],
                      **settings) -> torch.Tensor:
        """Generate with RefDrop Use at strength ``rfg``."""
        patches, close = self.use_patches(store, name, rfg, seeds[0], **settings)
        try:
            return self.generate(poses, seeds, patches)
        finally:
            close()


def to_pil(image: torch.Tensor, scale: int = 2) -> Image.Image:
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((SIZE * scale, SIZE * scale), Image.NEAREST)
