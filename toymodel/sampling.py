"""Generate with the toy model through the library's diffusers host, and run RefDrop's Save and Use on it unchanged.

The host (lib_refdrop/diffusers.py) calls every attn1 layer as ``patch(q, k, v, extra_options)`` with the WebUI
hosts' CFG batch layout (uncond chunk, then cond chunk), SD's sigmas and per-image seeds; RefDrop's Save and Use come
from the library's entry point (lib_refdrop/standalone.py). hostsim's own ``sample`` draws 4-channel latents and
random prompts, so this module feeds 3-channel pixels and the toy model's shape prompts to hostsim's samplers instead.
"""

from __future__ import annotations

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
from .model import WEIGHTS, ShapePrompts, load

FAMILY = "toy"
SCHEDULE = DiscreteSchedule()


def pass_context(seed: int, prompts: ShapePrompts | None = None, batch_index: int = 0,
                 batch_count: int = 1, host: RefDropHook | None = None) -> PassContext:
    """The toy model's one sampling pass, for RefDrop (``seed``: the first image's). With ``prompts``, images can be
    references: the toy model works on pixels, so an image's "latent" is its pixels, and an image prompt names a
    shape ("" = the empty prompt). With ``host``, its layers' projections (a profile that keeps the input)."""
    projections = host.projections if host is not None else None
    if prompts is None:
        return context(FAMILY, attention, SCHEDULE.percent_to_sigma, seed=seed, projections=projections)
    return context(FAMILY, attention, SCHEDULE.percent_to_sigma, seed=seed, encode_image=from_pil,
                   encode_prompt=lambda text: {"c_crossattn": prompts.of(text or None)},
                   batch_index=batch_index, batch_count=batch_count, projections=projections)


@dataclass
class ToyPipeline:
    """The trained model inside an attn1 host, with generation settings shared by every image."""

    host: RefDropHook
    prompts: ShapePrompts
    steps: int = 12
    cfg: float = 3.0
    sampler: str = "euler"

    @classmethod
    def load(cls, weights: Path = WEIGHTS, **kwargs) -> ToyPipeline:
        unet, prompts = load(weights)
        return cls(apply_refdrop(unet), prompts, **kwargs)

    @torch.no_grad()
    def generate(self, shapes: list[str], seeds: list[int], patch=None, wrapper=None,
                 input_patch=None) -> torch.Tensor:
        """Images ``[B, 3, SIZE, SIZE]`` in [-1, 1], image i conditioned on ``shapes[i]`` with noise from ``seeds[i]``.

        ``patch``: RefDrop's attn1 patch, installed on every attn1 layer like a host does (None = plain);
        ``wrapper``: its model function wrapper (image references, trajectories); ``input_patch``: its attn1_patch (a
        Save that keeps each layer's input).
        """
        if len(shapes) != len(seeds):
            raise ValueError("one shape per seed")
        gens = [torch.Generator().manual_seed(s) for s in seeds]

        def noise() -> torch.Tensor:
            return torch.cat([torch.randn((1, 3, SIZE, SIZE), generator=g) for g in gens])

        sigmas = SCHEDULE.get_sigmas(self.steps)
        cond = torch.cat([self.prompts.of(s) for s in shapes])
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

    def save_reference(self, store: ReferenceStore, name: str, shape: str, seed: int,
                       profile: str = "exact") -> torch.Tensor:
        """Generate one image with RefDrop Save on (the exact profile unless told: the toy measures compare against
        it); return it once the reference is on disk."""
        with start_save(store, name, pass_context(seed, host=self.host), profile=profile, overwrite=True) as save:
            image = self.generate([shape], [seed], save.patch, save.model_wrapper, save.input_patch)
            save.finish({"shape": shape, "seed": seed}, to_pil(image[0]))
        return image[0]

    def use_reference(self, store: ReferenceStore, name: str, rfg: float, shapes: list[str], seeds: list[int],
                      **settings) -> torch.Tensor:
        """Generate with RefDrop Use at strength ``rfg`` (other settings by their names in lib_refdrop.params)."""
        with start_use(store, reference=name, rfg=rfg, **settings) as use:
            patches = use.for_pass(pass_context(seeds[0], host=self.host))
            return self.generate(shapes, seeds, patches.attn1, patches.model_wrapper)

    def bake_image(self, store: ReferenceStore, name: str, image: Image.Image, seed: int, image_prompt: str = "",
                   profile: str = "") -> None:
        """Save ``image`` as a reference: a generation at ``seed`` runs the image's pass at each of its sigmas."""
        ctx = pass_context(seed, self.prompts)
        with start_save(store, name, ctx, profile=profile, overwrite=True, image=image,
                        image_prompt=image_prompt) as save:
            self.generate(["circle"], [seed], save.patch, save.model_wrapper)
            save.finish({"seed": seed})

    def generate_with(self, store: ReferenceStore, batches: list[tuple[list[str], list[int]]],
                      **settings) -> list[torch.Tensor]:
        """One generation of several batches (batch count) with a Use of ``settings`` (lib_refdrop.params names:
        ``source="batch"``, ``source="image", image=...``, ``reference_2`` ...)."""
        out = []
        with start_use(store, **settings) as use:
            for index, (shapes, seeds) in enumerate(batches):
                patches: PassPatches = use.for_pass(pass_context(seeds[0], self.prompts, index, len(batches),
                                                                 self.host))
                out.append(self.generate(shapes, seeds, patches.attn1, patches.model_wrapper))
        return out


def from_pil(image: Image.Image) -> torch.Tensor:
    """A toy image (RGB, SIZE x SIZE) as the model's pixels ``[1, 3, SIZE, SIZE]`` in [-1, 1]."""
    pixels = torch.frombuffer(bytearray(image.convert("RGB").resize((SIZE, SIZE), Image.NEAREST).tobytes()),
                              dtype=torch.uint8)
    return (pixels.reshape(SIZE, SIZE, 3).permute(2, 0, 1).float() / 127.5 - 1.0).unsqueeze(0)


def to_pil(image: torch.Tensor, scale: int = 4) -> Image.Image:
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((SIZE * scale, SIZE * scale), Image.NEAREST)
