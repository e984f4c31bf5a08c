"""An image as a reference in ComfyUI: ``IMAGE`` + ``VAE`` to the sampler's latent space, ``CONDITIONING`` to the
model's keyword arguments for one row, as a KSampler run would have them.

``encode_image`` crops the image to the run's latent size (centre crop, then resize, as the WebUIs' "Crop and
resize"), encodes it with the node's VAE (ComfyUI's SD VAEs encode the posterior's mode: the same latent every time)
and applies the model's ``process_latent_in``, which ``CFGGuider.inner_sample`` applies to a KSampler's own latent.
``encode_prompt`` runs the node's conditioning through the model's ``extra_conds`` the way ``process_conds`` does for
the run's own prompts (``c_crossattn``; SDXL also ``y`` from the pooled output and the size), so the image source's text
argument (``RefDropSettings.image_prompt``) is not used: ComfyUI gives its prompts as conditioning, not text.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import RefDropError

LATENT_FACTOR = 8
CONDITIONING_KEYS = ("c_crossattn", "y")


def to_pil(image) -> Image.Image:
    """The first image of a ComfyUI ``IMAGE`` (``[B, H, W, C]`` float in 0..1) as an RGB PIL image."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[0] < 1 or image.shape[-1] not in (3, 4):
        shape = list(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise RefDropError(f"RefDrop: expected an IMAGE [batch, height, width, 3], got {shape}")
    array = (image[0, ..., :3].float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def mask_to_pil(mask) -> Image.Image:
    """The first mask of a ComfyUI ``MASK`` (``[B, H, W]`` or ``[H, W]``, 1 = attended) as an "L" image."""
    if not torch.is_tensor(mask) or mask.ndim not in (2, 3):
        shape = list(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise RefDropError(f"RefDrop: expected a MASK [batch, height, width], got {shape}")
    first = mask[0] if mask.ndim == 3 else mask
    array = (first.float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "L")


def crop_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = min(image.width, round(width / scale)), min(image.height, round(height / scale))
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    box = (left, top, left + max(crop_w, 1), top + max(crop_h, 1))
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS, box=box)


def encoders(patcher, vae, conditioning, latent_image, seed) -> dict:
    """``encode_image`` / ``encode_prompt`` of a run whose latent is ``latent_image``, or nothing without a VAE (the
    engine then says that an image needs one)."""
    if vae is None or conditioning is None:
        return {}
    height, width = int(latent_image.shape[-2]), int(latent_image.shape[-1])
    base = patcher.model

    def device():
        return getattr(patcher, "load_device", None) or latent_image.device

    def encode_image(image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(crop_to_size(image, width * LATENT_FACTOR, height * LATENT_FACTOR), dtype=np.float32)
        with torch.no_grad():
            latent = vae.encode(torch.from_numpy(pixels / 255.0)[None])
            latent = base.process_latent_in(latent)
        if tuple(latent.shape[-2:]) != (height, width) or latent.shape[0] != 1:
            raise RefDropError(f"RefDrop: the VAE gave a latent of shape {list(latent.shape)} for a "
                               f"{width * LATENT_FACTOR}x{height * LATENT_FACTOR} image, expected "
                               f"[1, C, {height}, {width}]")
        return latent.to(device=device(), dtype=torch.float32)

    def encode_prompt(_text: str) -> dict:
        if not conditioning:
            raise RefDropError("RefDrop: the image's conditioning is empty")
        cross_attn, extras = conditioning[0][0], dict(conditioning[0][1])
        noise = torch.zeros((1, *latent_image.shape[1:]), dtype=torch.float32)
        params = {**extras, "cross_attn": cross_attn[:1], "device": device(), "noise": noise,
                  "width": width * LATENT_FACTOR, "height": height * LATENT_FACTOR, "prompt_type": "positive",
                  "latent_image": None, "denoise_mask": None, "seed": seed}
        conds = base.extra_conds(**params)
        out = {key: conds[key].cond[:1].to(device()) for key in CONDITIONING_KEYS if key in conds}
        if "c_crossattn" not in out:
            raise RefDropError("RefDrop: this model's conditioning is not supported for an image reference")
        return out

    return {"encode_image": encode_image, "encode_prompt": encode_prompt}
