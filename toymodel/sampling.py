"""Generate with the toy model through hostsim's attn1 host, and run RefDrop's Save and Use on it unchanged.

The host calls every attn1 layer as ``patch(q, k, v, extra_options)`` with the WebUI hosts' CFG batch layout
(uncond chunk, then cond chunk), SD's sigmas and per-image seeds; RefDrop is driven through ``RefDropRun`` exactly
as the host wiring does. hostsim's own ``sample`` draws 4-channel latents and random prompts, so this module feeds
3-channel pixels and the toy model's shape prompts to hostsim's samplers instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from lib_refdrop.generation import PassContext, RefDropRun
from lib_refdrop.settings import build as build_settings
from lib_refdrop.store import ReferenceStore
from tests.hostsim import SAMPLERS, AttnHost, DiscreteSchedule, sdpa_attention

from .data import SIZE
from .model import WEIGHTS, ShapePrompts, load

FAMILY = "toy"
SCHEDULE = DiscreteSchedule()


def host_attention(q, k, v, extra_options):
    """The host attention function in the (q, k, v, extra_options) form RefDrop's PassContext takes."""
    return sdpa_attention(q, k, v, extra_options["n_heads"])


@dataclass
class ToyPipeline:
    """The trained model inside an attn1 host, with generation settings shared by every image."""

    host: AttnHost
    prompts: ShapePrompts
    steps: int = 12
    cfg: float = 3.0
    sampler: str = "euler"
    passes: list[str] = field(default_factory=list)  # "plain" / "save" / "use": what each generation did

    @classmethod
    def load(cls, weights: Path = WEIGHTS, **kwargs) -> ToyPipeline:
        unet, prompts = load(weights)
        return cls(AttnHost(unet), prompts, **kwargs)

    @torch.no_grad()
    def generate(self, shapes: list[str], seeds: list[int], refdrop: RefDropRun | None = None) -> torch.Tensor:
        """Images ``[B, 3, SIZE, SIZE]`` in [-1, 1], image i conditioned on ``shapes[i]`` with noise from ``seeds[i]``.

        With ``refdrop``, its attn1 patch for this pass is installed like a host does (None = plain).
        """
        if len(shapes) != len(seeds):
            raise ValueError("one shape per seed")
        gens = [torch.Generator().manual_seed(s) for s in seeds]

        def noise() -> torch.Tensor:
            return torch.cat([torch.randn((1, 3, SIZE, SIZE), generator=g) for g in gens])

        sigmas = SCHEDULE.get_sigmas(self.steps)
        cond = torch.cat([self.prompts.of(s) for s in shapes])
        uncond = self.prompts.of(None).expand_as(cond)
        context = torch.cat([uncond, cond])
        ctx = PassContext(family=FAMILY, is_hr_pass=False, percent_to_sigma=SCHEDULE.percent_to_sigma,
                          attention=host_attention, inner=host_attention, seed=seeds[0])
        self.host.patch = refdrop.patch_for_pass(ctx) if refdrop is not None else None
        try:
            return SAMPLERS[self.sampler](self._denoiser(context), noise() * sigmas[0], sigmas, noise,
                                          lambda *_: None)
        finally:
            self.host.patch = None

    def _denoiser(self, context: torch.Tensor):
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            c_in = 1.0 / (sigma ** 2 + 1.0) ** 0.5
            eps = self.host(torch.cat([x, x]) * c_in, SCHEDULE.sigma_to_t(sigma), context,
                            cond_or_uncond=[1, 0], sigmas=sigma.to(torch.float32).expand(b).clone())
            uncond, cond = eps[:b], eps[b:]
            return x - sigma * (uncond + (cond - uncond) * self.cfg)

        return denoise

    def save_reference(self, store: ReferenceStore, name: str, shape: str, seed: int,
                       profile: str = "") -> torch.Tensor:
        """Generate one image with RefDrop Save on; return it once the reference is on disk."""
        run = RefDropRun(build_settings({"enabled": True, "mode": "Save", "save_name": name, "profile": profile,
                                         "overwrite": True}), store)
        image = self.generate([shape], [seed], run)
        run.finish_save({"shape": shape, "seed": seed}, to_pil(image[0]))
        run.writer.wait()
        if run.writer.status.state != "saved":
            raise RuntimeError(f"saving reference {name!r} failed: {run.writer.status.message}")
        return image[0]

    def use_reference(self, store: ReferenceStore, name: str, rfg: float, shapes: list[str], seeds: list[int],
                      **settings) -> torch.Tensor:
        """Generate with RefDrop Use at strength ``rfg`` (other settings by their names in lib_refdrop.settings)."""
        run = RefDropRun(build_settings({"enabled": True, "mode": "Use", "reference": name, "rfg": rfg, **settings}),
                         store)
        return self.generate(shapes, seeds, run)


def to_pil(image: torch.Tensor, scale: int = 4) -> Image.Image:
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((SIZE * scale, SIZE * scale), Image.NEAREST)
