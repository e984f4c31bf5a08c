"""Generate with the toy model through hostsim's attn1 host, and run RefDrop's Save and Use on it unchanged.

The host calls every attn1 layer as ``patch(q, k, v, extra_options)`` with the WebUI hosts' CFG batch layout
(uncond chunk, then cond chunk), SD's sigmas and per-image seeds; RefDrop's Save and Use come from the library's
entry point (lib_refdrop/standalone.py). hostsim's own ``sample`` draws 4-channel latents and random prompts, so
this module feeds 3-channel pixels and the toy model's shape prompts to hostsim's samplers instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.standalone import PassContext, context, start_save, use_patch
from tests.support.hostsim import SAMPLERS, AttnHost, DiscreteSchedule, host_attention

from .data import SIZE
from .model import WEIGHTS, ShapePrompts, load

FAMILY = "toy"
SCHEDULE = DiscreteSchedule()


def pass_context(seed: int) -> PassContext:
    """The toy model's one sampling pass, for RefDrop (``seed``: the first image's)."""
    return context(FAMILY, host_attention, SCHEDULE.percent_to_sigma, seed=seed)


@dataclass
class ToyPipeline:
    """The trained model inside an attn1 host, with generation settings shared by every image."""

    host: AttnHost
    prompts: ShapePrompts
    steps: int = 12
    cfg: float = 3.0
    sampler: str = "euler"

    @classmethod
    def load(cls, weights: Path = WEIGHTS, **kwargs) -> ToyPipeline:
        unet, prompts = load(weights)
        return cls(AttnHost(unet), prompts, **kwargs)

    @torch.no_grad()
    def generate(self, shapes: list[str], seeds: list[int], patch=None) -> torch.Tensor:
        """Images ``[B, 3, SIZE, SIZE]`` in [-1, 1], image i conditioned on ``shapes[i]`` with noise from ``seeds[i]``.

        ``patch``: RefDrop's attn1 patch, installed on every attn1 layer like a host does (None = plain).
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
        self.host.patch = patch
        try:
            return SAMPLERS[self.sampler](self._denoiser(prompts), noise() * sigmas[0], sigmas, noise,
                                          lambda *_: None)
        finally:
            self.host.patch = None

    def _denoiser(self, prompts: torch.Tensor):
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            c_in = 1.0 / (sigma ** 2 + 1.0) ** 0.5
            eps = self.host(torch.cat([x, x]) * c_in, SCHEDULE.sigma_to_t(sigma), prompts,
                            cond_or_uncond=[1, 0], sigmas=sigma.to(torch.float32).expand(b).clone())
            uncond, cond = eps[:b], eps[b:]
            return x - sigma * (uncond + (cond - uncond) * self.cfg)

        return denoise

    def save_reference(self, store: ReferenceStore, name: str, shape: str, seed: int,
                       profile: str = "") -> torch.Tensor:
        """Generate one image with RefDrop Save on; return it once the reference is on disk."""
        with start_save(store, name, pass_context(seed), profile=profile, overwrite=True) as save:
            image = self.generate([shape], [seed], save.patch)
            save.finish({"shape": shape, "seed": seed}, to_pil(image[0]))
        return image[0]

    def use_reference(self, store: ReferenceStore, name: str, rfg: float, shapes: list[str], seeds: list[int],
                      **settings) -> torch.Tensor:
        """Generate with RefDrop Use at strength ``rfg`` (other settings by their names in lib_refdrop.params)."""
        return self.generate(shapes, seeds, use_patch(store, name, rfg, pass_context(seeds[0]), **settings))


def to_pil(image: torch.Tensor, scale: int = 4) -> Image.Image:
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((SIZE * scale, SIZE * scale), Image.NEAREST)
