"""Generate with a trained dev model through the library's diffusers host, and run RefDrop's Save and Use on it
unchanged.

The host (lib_refdrop/diffusers.py) calls every attn1 layer as ``patch(q, k, v, extra_options)`` with the WebUI hosts'
CFG batch layout (uncond chunk, then cond chunk), SD's sigmas and per-image seeds; RefDrop's Save and Use come from
the library's entry point (lib_refdrop/standalone.py). The models work on pixels, so an image's "latent" is its
pixels, and an image prompt names a label ("" = the empty prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from lib_refdrop.diffusers import RefDropConfig, RefDropHook, apply_refdrop
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.standalone import PassContext, PassPatches, start_save, start_use

from .model import DevModel, Prompts, load
from .sampling import SAMPLERS, SCHEDULE, model_call


@dataclass
class Pipeline:
    """A trained dev model inside the library's diffusers host, with generation settings shared by every image.

    ``bake_trajectories``: off, a trajectory reference is evaluated again at every Use, so that each Use measures a
    profile as it stores a reference (as the tests' harness does); on, its first Use bakes its rows and later Uses
    read them, as in a host (lib_refdrop/bake.py).
    """

    model: DevModel
    hook: RefDropHook
    prompts: Prompts
    steps: int
    cfg: float = 3.0
    sampler: str = "euler"
    bake_trajectories: bool = False

    @classmethod
    def load(cls, model: DevModel, weights: Path | None = None, **kwargs) -> Pipeline:
        """``model`` with its committed weights (or those at ``weights``); ``steps`` defaults to the model's."""
        unet, prompts = load(model, weights)
        kwargs.setdefault("steps", model.steps)
        return cls(model, apply_refdrop(unet), prompts, **kwargs)

    def pass_context(self, seed: int, batch_index: int = 0, batch_count: int = 1) -> PassContext:
        """One sampling pass, for RefDrop (``seed``: the first image's): the U-Net's projections and layer widths,
        and the encoders an image reference needs."""
        return self.hook.context(self.model.name, SCHEDULE.percent_to_sigma, seed, encode_image=self.encode_image,
                                 encode_prompt=lambda text: {"c_crossattn": self.prompts.of(text or None)},
                                 batch_index=batch_index, batch_count=batch_count)

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        return from_pil(image, self.model.size)

    @torch.no_grad()
    def generate(self, labels: list[str], seeds: list[int], patches: PassPatches | None = None) -> torch.Tensor:
        """Images ``[B, 3, size, size]`` in [-1, 1], image i prompted with ``labels[i]`` and noise from ``seeds[i]``,
        with a pass's ``patches`` installed for this generation (None: plain)."""
        if len(labels) != len(seeds):
            raise ValueError("one label per seed")
        size = self.model.size
        gens = [torch.Generator().manual_seed(s) for s in seeds]

        def noise() -> torch.Tensor:
            return torch.cat([torch.randn((1, 3, size, size), generator=g) for g in gens])

        sigmas = SCHEDULE.get_sigmas(self.steps)
        cond = torch.cat([self.prompts.of(label) for label in labels])
        uncond = self.prompts.of(None).expand_as(cond)
        prompts = torch.cat([uncond, cond])
        apply_refdrop(self.hook.unet, patches)
        try:
            return SAMPLERS[self.sampler](self._denoiser(prompts), noise() * sigmas[0], sigmas, noise,
                                          lambda *_: None)
        finally:
            self.hook.config = RefDropConfig()

    def _denoiser(self, prompts: torch.Tensor):
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            eps = model_call(self.hook, torch.cat([x, x]), sigma, prompts, [1, 0])
            uncond, cond = eps[:b], eps[b:]
            return x - sigma * (uncond + (cond - uncond) * self.cfg)

        return denoise

    def save_reference(self, store: ReferenceStore, name: str, label: str, seed: int,
                       profile: str = "exact") -> torch.Tensor:
        """Generate one image with RefDrop Save on (the exact profile unless told: the measures compare against it);
        return it once the reference is on disk."""
        with start_save(store, name, self.pass_context(seed), profile=profile, overwrite=True) as save:
            image = self.generate([label], [seed], save.patches)
            save.finish({self.model.label_name: label, "seed": seed, "width": self.model.size,
                         "height": self.model.size}, to_pil(image[0], self.model.preview_scale))
        return image[0]

    def save_first_references(self, store: ReferenceStore, count: int, shows: Callable[[torch.Tensor, str], bool],
                              profile: str = "exact", prefix: str = "ref",
                              first_seed: int = 10_000) -> list[tuple[str, str, int, torch.Tensor]]:
        """References ``<prefix>0``, ``<prefix>1``, ... saved from the first seeds from ``first_seed`` on whose image
        ``shows`` its label (``shows(image, label)``), the labels in turn: ``(name, label, seed, image)`` each."""
        found: list[tuple[str, str, int, torch.Tensor]] = []
        seed = first_seed
        while len(found) < count:
            label = self.model.labels[len(found) % len(self.model.labels)]
            name = f"{prefix}{len(found)}"
            image = self.save_reference(store, name, label, seed, profile)
            if shows(image, label):
                found.append((name, label, seed, image))
            else:
                store.delete(name)
            seed += 1
            if seed > first_seed + 20 * count:
                raise RuntimeError("the model rarely draws its prompt: retrain it")
        return found

    def use_patches(self, store: ReferenceStore, name: str, rfg: float, seed: int, **settings):
        """RefDrop Use's ``PassPatches`` at strength ``rfg`` (other settings by their names in lib_refdrop.params) for
        one generation, and the function that ends the Use (closes the reference)."""
        use = start_use(store, bake_trajectories=self.bake_trajectories, **settings, reference=name, rfg=rfg)
        return use.for_pass(self.pass_context(seed)), use.close

    def use_reference(self, store: ReferenceStore, name: str, rfg: float, labels: list[str], seeds: list[int],
                      **settings) -> torch.Tensor:
        """Generate with RefDrop Use at strength ``rfg``."""
        patches, close = self.use_patches(store, name, rfg, seeds[0], **settings)
        try:
            return self.generate(labels, seeds, patches)
        finally:
            close()

    def bake_image(self, store: ReferenceStore, name: str, image: Image.Image, seed: int, image_prompt: str = "",
                   profile: str = "exact") -> None:
        """Save ``image`` as a reference: a generation at ``seed`` runs the image's pass at each of its sigmas."""
        with start_save(store, name, self.pass_context(seed), profile=profile, overwrite=True, image=image,
                        image_prompt=image_prompt) as save:
            self.generate([self.model.labels[0]], [seed], save.patches)
            save.finish({"seed": seed})

    def generate_with(self, store: ReferenceStore, batches: list[tuple[list[str], list[int]]],
                      **settings) -> list[torch.Tensor]:
        """One generation of several batches (batch count) with a Use of ``settings`` (lib_refdrop.params names:
        ``source="batch"``, ``source="image", image=...``, ``reference_2`` ...)."""
        out = []
        with start_use(store, bake_trajectories=self.bake_trajectories, **settings) as use:
            for index, (labels, seeds) in enumerate(batches):
                patches = use.for_pass(self.pass_context(seeds[0], index, len(batches)))
                out.append(self.generate(labels, seeds, patches))
        return out


def from_pil(image: Image.Image, size: int) -> torch.Tensor:
    """An image (RGB) as a model's pixels ``[1, 3, size, size]`` in [-1, 1]."""
    pixels = torch.frombuffer(bytearray(image.convert("RGB").resize((size, size), Image.NEAREST).tobytes()),
                              dtype=torch.uint8)
    return (pixels.reshape(size, size, 3).permute(2, 0, 1).float() / 127.5 - 1.0).unsqueeze(0)


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """Pixels ``[3, size, size]`` in [-1, 1] as an RGB image, each pixel ``scale`` x ``scale``."""
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((image.shape[-1] * scale, image.shape[-2] * scale), Image.NEAREST)
