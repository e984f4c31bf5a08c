"""Random-weight diffusers U-Nets with the SD1.5 / SDXL block structure, and their host: the library's diffusers host
(lib_refdrop/diffusers.py), with SDXL's added conditioning made up from the prompt.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from lib_refdrop.diffusers import RefDropHook

__all__ = ["SDHost", "make_unet", "unet_arch"]


def _sd15_config(width: str) -> dict:
    cfg = dict(
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        attention_head_dim=8,  # diffusers' legacy name: this is the number of heads (SD1.5 config says 8)
        transformer_layers_per_block=1,
        use_linear_projection=False,
    )
    if width == "full":
        cfg.update(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, norm_num_groups=32,
                   sample_size=64)
    else:
        cfg.update(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, norm_num_groups=8, sample_size=16)
    return cfg


def _sdxl_config(width: str) -> dict:
    cfg = dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
    )
    if width == "full":
        # heads = channels / 64, as in the SDXL base config
        cfg.update(block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                   transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, norm_num_groups=32,
                   addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128)
    else:
        # dim_head 8; depth (1, 2, 2) keeps block_index > 0 in every attention level (mid block uses the last one)
        pooled_dim, time_dim = 32, 8
        cfg.update(block_out_channels=(32, 64, 64), attention_head_dim=(4, 8, 8),
                   transformer_layers_per_block=(1, 2, 2), cross_attention_dim=32, norm_num_groups=8,
                   addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim,
                   sample_size=8)
    return cfg


def make_unet(arch: str = "sd15", width: str = "tiny", seed: int = 0, in_channels: int = 4,
              sample_size: int | None = None) -> UNet2DConditionModel:
    """Build a deterministic random-weight U-Net (eval mode, fp32).

    ``width="tiny"`` keeps the exact block/layer structure of the real model (so addressing, depth and call order
    match the hosts) with channel counts small enough for fast CPU tests; ``width="full"`` is the real config
    (≈860M params for sd15, ≈2.6B for sdxl: only for manual checks).
    """
    if arch not in ("sd15", "sdxl"):
        raise ValueError(f"unknown arch {arch!r}")
    if width not in ("tiny", "full"):
        raise ValueError(f"unknown width {width!r}")
    cfg = _sd15_config(width) if arch == "sd15" else _sdxl_config(width)
    cfg.update(in_channels=in_channels, out_channels=4)
    if sample_size is not None:
        cfg["sample_size"] = sample_size
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg)
    return unet.float().eval().requires_grad_(False)  # .float(): ModelMixin.to() warns about fp32 modules


def unet_arch(unet: UNet2DConditionModel) -> str:
    """'sdxl' for a text_time-conditioned U-Net, else 'sd15' (the only two structures ``make_unet`` builds)."""
    return "sdxl" if unet.config.addition_embed_type == "text_time" else "sd15"


class SDHost(RefDropHook):
    """The library's diffusers host on an SD1.5 or SDXL U-Net, installed at once; an SDXL U-Net's
    ``added_cond_kwargs`` are made up per call (pooled text = the first context token, repeated; time ids = the image
    size), so that a sampler passes the prompt only. ``n_forwards`` counts the U-Net calls."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.n_forwards = 0
        self.install(unet)

    def forward(self, x: torch.Tensor, timestep, context: torch.Tensor, *, cond_or_uncond: list[int],
                sigmas: torch.Tensor, pooled: torch.Tensor | None = None, transformer_options: dict | None = None,
                **unet_kwargs) -> torch.Tensor:
        """One U-Net call (``RefDropHook.forward``); ``pooled``: SDXL's pooled text (default: made up)."""
        if self.unet.config.addition_embed_type == "text_time":
            unet_kwargs["added_cond_kwargs"] = self._sdxl_added_cond(x, context, pooled)
        out = super().forward(x, timestep, context, cond_or_uncond=cond_or_uncond, sigmas=sigmas,
                              transformer_options=transformer_options, **unet_kwargs)
        self.n_forwards += 1
        return out

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    def _sdxl_added_cond(self, x, context, pooled):
        cfg = self.unet.config
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        if pooled is None:
            first = context[:, 0]
            reps = -(-pooled_dim // first.shape[-1])
            pooled = first.repeat(1, reps)[:, :pooled_dim]
        h, w = x.shape[-2] * 8, x.shape[-1] * 8
        time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=x.dtype).expand(x.shape[0], 6)
        return {"text_embeds": pooled.to(x.dtype), "time_ids": time_ids}
