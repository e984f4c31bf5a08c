"""The reference pass: an image evaluated by the U-Net just before each of the generation's U-Net calls.

An image reference is the image's latent ``z`` noised to the sigma of the call, ``x = z + sigma * noise`` (one fixed
noise from a seed), run as one row conditioned on the image's prompt. Its attn1 calls carry ``PASS_KEY`` in their
``extra_options``, naming the image, so the attn1 patch records their K and V instead of guiding them: a Save bakes
them into a stored reference, a Use attends to them in the call that follows (a live image reference).

The pass goes through the host's model function wrapper, ``wrapper(apply_model, args)`` with ``args`` = ``{"input",
"timestep", "c", "cond_or_uncond"}`` (ComfyUI's convention, which both hosts' adapters present): ``input`` the noisy
latent before the model's input scaling, ``timestep`` the sigma of each row, ``c`` the model's keyword arguments with
the ``transformer_options`` the attn1 patch receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import RefDropError

PASS_KEY = "refdrop_reference_pass"  # in extra_options of a reference pass's attn1 calls: the image's name
Wrapper = Callable[[Callable, dict], torch.Tensor]


@dataclass
class ImageLatent:
    """One image as the U-Net sees it: its latent, the fixed noise, and its conditioning as model keyword
    arguments (``{"c_crossattn": [1, T, D]}``, plus ``"y"`` on SDXL)."""

    name: str
    latent: torch.Tensor            # [1, C, h, w], in the sampler's latent space
    noise: torch.Tensor             # same shape
    conditioning: dict

    def at(self, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (self.latent + sigma.reshape(1, 1, 1, 1).to(self.latent) * self.noise).to(like.device, like.dtype)


def fixed_noise(latent: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent.device, latent.dtype)


def _moved(conditioning: dict, like: torch.Tensor) -> dict:
    return {key: value.to(like.device, like.dtype) if torch.is_tensor(value) else value
            for key, value in conditioning.items()}


def reference_pass_wrapper(images: list[ImageLatent], wanted: Callable[[float], bool] = lambda sigma: True) -> Wrapper:
    """The model function wrapper that runs each image's pass before the U-Net call it wraps, at the sigmas
    ``wanted`` accepts (a Use's step window: outside it nothing reads the pass).

    The pass at a sigma depends on nothing but the sigma, so calls at the sigma of the previous call (a
    second-order sampler's corrector and the next predictor, cond and uncond run as separate calls) reuse what it
    recorded: a Save records each sigma once."""
    last_sigma: float | None = None

    def refdrop_reference_pass(apply_model, args):
        nonlocal last_sigma
        x, timestep, c = args["input"], args["timestep"], args["c"]
        if "c_concat" in c:  # the pass would need the image's own concat input (a masked image) too
            raise RefDropError("RefDrop: an image reference does not work with an inpainting or instruct model; "
                               "use a saved reference or the first image of the batch")
        sigma = timestep.reshape(-1)[:1]
        if last_sigma != float(sigma) and wanted(float(sigma)):
            last_sigma = float(sigma)
            options = c.get("transformer_options", {})
            for image in images:
                transformer_options = {**options, "cond_or_uncond": [0], "sigmas": sigma, PASS_KEY: image.name}
                apply_model(image.at(sigma, x), sigma.to(timestep.dtype),
                            **_moved(image.conditioning, x), transformer_options=transformer_options)
        return apply_model(x, timestep, **c)

    return refdrop_reference_pass
