"""An image and its prompt as one row of this pass's U-Net call: what a reference pass needs from the host.

``encode_image`` does what img2img does with its init image (``modules/processing.py``: ``images_tensor_to_samples``
with the Settings' VAE encode method, through the loaded model's ``encode_first_stage``, which applies the latent
format's ``process_in``), after cropping the image to the pass's size, so the latent is in the sampler's space.
``encode_prompt`` asks the loaded model for the prompt's conditioning the way the host's own prompts are encoded
(``get_learned_conditioning`` on an ``SdConditioning`` that carries the pass's size, which SDXL embeds) and turns
it into ``apply_model``'s keyword arguments as both hosts' samplers do (a tensor is ``c_crossattn``; SDXL's dict
gives ``c_crossattn`` = ``crossattn`` and ``y`` = ``vector``).

Both load a model through the host's memory management (the VAE, the text encoder), so they are meant to run
while a pass is being prepared (``process_before_every_sampling``), never from inside a U-Net call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from ...crop import centre_box
from ...errors import RefDropError

LATENT_FACTOR = 8  # the VAE's downsampling in every supported family
ENCODE_SEED = 0    # a reference's latent depends on its image only


def pass_size(p) -> tuple[int, int]:
    """The (width, height) of the images this pass makes: the hires size in a hires pass."""
    if getattr(p, "is_hr_pass", False):
        return int(p.hr_upscale_to_x), int(p.hr_upscale_to_y)
    return int(p.width), int(p.height)


def known_pass_size(p) -> tuple[int, int] | None:
    """``pass_size`` where ``p`` has the sizes, else None (RefDrop then needs no size until an image is encoded)."""
    try:
        return pass_size(p)
    except (AttributeError, TypeError, ValueError):
        return None


def crop_to_size(image, width: int, height: int):
    """``image`` as RGB, centre-cropped to the aspect ratio of ``width`` x ``height`` and resized to it (the hosts'
    "Crop and resize")."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise RefDropError(f"RefDrop: the reference image is not an image (got {type(image).__name__})")
    if image.width < 1 or image.height < 1:
        raise RefDropError("RefDrop: the reference image is empty")
    image = image.convert("RGB")
    box = centre_box(image.width, image.height, width, height)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def image_tensor(image) -> torch.Tensor:
    """An RGB image as the hosts give it to ``images_tensor_to_samples``: ``[1, 3, H, W]`` float32 in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def unet_device(p, fallback=None):
    """Where the sampler's latents live: the U-Net patcher's load device."""
    unet = p.sd_model.forge_objects.unet
    device = getattr(unet, "load_device", None)
    return device if device is not None else fallback


def encode_image(p, image, to_latent: Callable[[torch.Tensor], torch.Tensor], device=None) -> torch.Tensor:
    """``image`` cropped to this pass's size and encoded by ``to_latent`` (the host's img2img encoder):
    ``[1, C, H/8, W/8]`` float32 (the sampler's ``x`` is float32; ``apply_model`` casts it) on ``device``."""
    width, height = pass_size(p)
    latent = to_latent(image_tensor(crop_to_size(image, width, height)))
    expected = (height // LATENT_FACTOR, width // LATENT_FACTOR)
    if latent.ndim != 4 or latent.shape[0] != 1 or tuple(latent.shape[2:]) != expected:
        raise RefDropError(f"RefDrop: the VAE gave a latent of shape {list(latent.shape)} for a {width}x{height} "
                           f"image, expected [1, C, {expected[0]}, {expected[1]}]")
    return latent.to(device=device if device is not None else latent.device, dtype=torch.float32)


def conditioning_kwargs(cond) -> dict:
    """The model's ``get_learned_conditioning`` result for one prompt as ``apply_model`` keyword arguments."""
    if torch.is_tensor(cond):
        return {"c_crossattn": cond[:1]}
    if isinstance(cond, dict) and "crossattn" in cond:
        kwargs = {"c_crossattn": cond["crossattn"][:1]}
        if cond.get("vector") is not None:
            kwargs["y"] = cond["vector"][:1]
        return kwargs
    raise RefDropError(f"RefDrop: this model's text conditioning is not supported for an image prompt "
                       f"(got {type(cond).__name__})")


def encode_prompt(p, text: str, learned_conditioning: Callable, device=None) -> dict:
    """``text`` encoded by ``learned_conditioning(texts, width, height)`` (the loaded model's, with this pass's size)
    as one row of ``apply_model``'s keyword arguments, on ``device``."""
    if not isinstance(text, str):
        raise RefDropError(f"RefDrop: the image prompt must be text (got {type(text).__name__})")
    width, height = pass_size(p)
    kwargs = conditioning_kwargs(learned_conditioning([text], width, height))
    return {key: value.to(device) if device is not None else value for key, value in kwargs.items()}


# -- the host's side (both hosts share A1111's modules for these) -------------------------------------------------

@contextlib.contextmanager
def fixed_rng(seed: int = ENCODE_SEED):
    """The global CPU and CUDA generators seeded with ``seed`` inside the block and restored after it.

    Forge's VAE returns a sample of its posterior (``backend/nn/vae.py`` ``encode``: ``posterior.sample()``, from
    the global generator), so without this an image would give another latent at every encode, and the encode
    would move the generator the generation draws from. Other devices' generators (MPS, XPU) are left alone."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield


def host_image_encoder(p) -> Callable[[torch.Tensor], torch.Tensor]:
    """img2img's encoder: ``images_tensor_to_samples`` with the Settings' VAE encode method and the loaded model,
    under :func:`fixed_rng`."""
    from modules import shared
    from modules.sd_samplers_common import approximation_indexes, images_tensor_to_samples

    method = approximation_indexes.get(getattr(shared.opts, "sd_vae_encode_method", "Full"), 0)

    def to_latent(pixels):
        with torch.no_grad(), fixed_rng():
            return images_tensor_to_samples(pixels, method, p.sd_model)

    return to_latent


def host_learned_conditioning(p) -> Callable:
    """The loaded model's ``get_learned_conditioning`` on an ``SdConditioning`` carrying the pass's size, under the
    host's autocast as its own prompts are (``StableDiffusionProcessing.get_conds_with_caching``)."""
    from modules import devices, prompt_parser

    def learned_conditioning(texts, width, height):
        prompts = prompt_parser.SdConditioning(texts, width=width, height=height)
        with torch.no_grad(), devices.autocast():
            return p.sd_model.get_learned_conditioning(prompts)

    return learned_conditioning


def host_encoders(p) -> dict:
    """``encode_image`` and ``encode_prompt`` bound to ``p`` and the running host, for the pass context."""
    def device():
        from modules import devices

        return unet_device(p, fallback=devices.device)

    return {
        "encode_image": lambda image: encode_image(p, image, host_image_encoder(p), device()),
        "encode_prompt": lambda text: encode_prompt(p, text, host_learned_conditioning(p), device()),
    }
