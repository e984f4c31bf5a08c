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
    per_evaluation = False          # its pass at a sigma is the same for every evaluation there

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the latent: the aspect ratio of the image's tokens, as cut to the pass."""
        return int(self.latent.shape[-1]), int(self.latent.shape[-2])

    def at(self, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (self.latent + sigma.reshape(1, 1, 1, 1).to(self.latent) * self.noise).to(like.device, like.dtype)

    def inputs(self, sigma: torch.Tensor, like: torch.Tensor, model_kwargs: dict):
        """``(x, conditioning keyword arguments, cond_or_uncond)`` of the image's pass at ``sigma``: one cond row
        (encoded by the generation's own model: ``like`` and ``model_kwargs``, the generation's, need no check)."""
        return self.at(sigma, like), self.conditioning, [0]


def fixed_noise(latent: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent.device, latent.dtype)


def _moved(conditioning: dict, like: torch.Tensor) -> dict:
    return {key: value.to(like.device, like.dtype) if torch.is_tensor(value) else value
            for key, value in conditioning.items()}


class Evaluations:
    """Which U-Net calls start a new evaluation of the model: a new sigma, or at the same sigma a new latent (a
    second-order sampler's corrector and the next step's predictor); cond and uncond run as separate calls on the
    same latent continue one evaluation. Counted the same at Save and at Use, so their occurrences line up."""

    def __init__(self, track_latents: bool = True):
        self._sigma: float | None = None
        self._latent: torch.Tensor | None = None
        self._track_latents = track_latents  # else every call at a new sigma starts one (no copy, no device sync)

    def see(self, sigma: float, latent: torch.Tensor) -> tuple[bool, bool]:
        """``(new sigma, new evaluation)`` for a call at ``sigma`` whose first image's input is ``latent``."""
        new_sigma = sigma != self._sigma
        if not self._track_latents:
            self._sigma = sigma
            return new_sigma, new_sigma
        new_evaluation = new_sigma or not torch.equal(latent, self._latent)  # compared only at a repeated sigma
        if new_evaluation:
            self._sigma, self._latent = sigma, latent.clone()
        return new_sigma, new_evaluation


def reference_pass_wrapper(images: list, wanted: Callable[[float], bool] = lambda sigma: True) -> Wrapper:
    """The model function wrapper that runs each image's pass before the U-Net call it wraps, at the sigmas
    ``wanted`` accepts (a Use's step window: outside it nothing reads the pass). An "image" is an ``ImageLatent`` or
    anything else with a ``name``, ``per_evaluation`` and ``inputs(sigma, like, model_kwargs)`` (a stored trajectory:
    ``trajectory.py``).

    An image's pass depends on nothing but the sigma, so calls at the sigma of the previous call reuse what it
    recorded (a Save records each sigma once); a trajectory's pass is redone for each new evaluation."""
    evaluations = Evaluations(track_latents=any(image.per_evaluation for image in images))

    def refdrop_reference_pass(apply_model, args):
        x, timestep, c = args["input"], args["timestep"], args["c"]
        if "c_concat" in c:  # the pass would need the image's own concat input (a masked image) too
            raise RefDropError("RefDrop: an image reference does not work with an inpainting or instruct model; "
                               "use a saved reference or the first image of the batch")
        sigma = timestep.reshape(-1)[:1]
        new_sigma, new_evaluation = evaluations.see(float(sigma), x[0])
        if new_evaluation and wanted(float(sigma)):
            options = c.get("transformer_options", {})
            for image in images:
                if not (new_sigma or image.per_evaluation):
                    continue
                x_pass, conditioning, cond_or_uncond = image.inputs(sigma, x, c)
                transformer_options = {**options, "cond_or_uncond": cond_or_uncond, "sigmas": sigma,
                                       PASS_KEY: image.name}
                apply_model(x_pass, sigma.to(timestep.dtype).repeat(x_pass.shape[0]),
                            **_moved(conditioning, x), transformer_options=transformer_options)
        return apply_model(x, timestep, **c)

    return refdrop_reference_pass
