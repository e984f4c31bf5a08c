"""Random-weight diffusers U-Nets with the SD1.5 / SDXL block structure. Their host (ldm) layer addressing is the
library's (lib_refdrop/diffusers.py ``layer_map``), re-exported here.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from lib_refdrop.diffusers import LayerInfo, layer_map

__all__ = ["LayerInfo", "make_unet", "layer_map", "unet_arch"]


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
    """'sdxl' for a text_time-conditioned U-Net, else 'sd15' (the only two structures hostsim builds)."""
    return "sdxl" if unet.config.addition_embed_type == "text_time" else "sd15"
