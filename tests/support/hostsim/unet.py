"""Random-weight diffusers U-Nets with the SD1.5 / SDXL block structure, and their host (ldm) layer addressing.

The WebUI hosts address attn1 layers by the ldm U-Net numbering (``("input", 4)``, ``("middle", 0)``, ...) plus the
index of the BasicTransformerBlock inside the SpatialTransformer.  diffusers numbers the same modules differently
(``down_blocks.1.attentions.0``), so :func:`layer_map` translates once, in execution order, and everything else in
``hostsim`` uses that table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

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


@dataclass(frozen=True)
class LayerInfo:
    """One self-attention (attn1) layer as the host addresses it."""

    name: str  # diffusers module path of the attn1 module
    block: tuple[str, int]  # ldm addressing: ("input" | "middle" | "output", n)
    block_index: int  # BasicTransformerBlock index inside its SpatialTransformer (Transformer2DModel)
    transformer_index: int  # running count of Transformer2DModel modules in one forward
    n_heads: int
    dim_head: int
    level: int  # resolution level: tokens = (H / 2**level) * (W / 2**level) for latent H x W
    transformer_name: str  # diffusers module path of the enclosing Transformer2DModel

    @property
    def key(self) -> tuple[str, int, int]:
        """The 3-tuple key of ``set_model_attn1_replace(patch, block_name, number, transformer_index)``."""
        return (self.block[0], self.block[1], self.block_index)


def _transformer_layers(prefix: str, transformer, block, t_index: int, level: int) -> list[LayerInfo]:
    layers = []
    for k, tb in enumerate(transformer.transformer_blocks):
        attn = tb.attn1
        heads = attn.heads
        layers.append(LayerInfo(
            name=f"{prefix}.transformer_blocks.{k}.attn1", block=block, block_index=k, transformer_index=t_index,
            n_heads=heads, dim_head=attn.to_q.out_features // heads, level=level, transformer_name=prefix,
        ))
    return layers


def layer_map(unet: UNet2DConditionModel) -> list[LayerInfo]:
    """All attn1 layers in execution order with their host addressing.

    ldm numbering (layers_per_block L, 2 for SD1.5 and SDXL): ``down_blocks.i.attentions.j`` -> input ``1+(L+1)*i+j``
    (each level has L resnets plus a downsampler), ``mid_block`` -> middle 0, ``up_blocks.i.attentions.j`` -> output
    ``(L+1)*i+j``.  ``transformer_index`` counts Transformer2DModels in that order.
    """
    lpb = unet.config.layers_per_block
    if not isinstance(lpb, int):
        raise ValueError("layer_map needs an int layers_per_block")
    n_levels = len(unet.down_blocks)
    layers: list[LayerInfo] = []
    t_index = 0
    for i, down in enumerate(unet.down_blocks):
        for j, tr in enumerate(getattr(down, "attentions", None) or []):
            layers += _transformer_layers(f"down_blocks.{i}.attentions.{j}", tr, ("input", 1 + (lpb + 1) * i + j),
                                          t_index, i)
            t_index += 1
    for j, tr in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        layers += _transformer_layers(f"mid_block.attentions.{j}", tr, ("middle", j), t_index, n_levels - 1)
        t_index += 1
    for i, up in enumerate(unet.up_blocks):
        for j, tr in enumerate(getattr(up, "attentions", None) or []):
            layers += _transformer_layers(f"up_blocks.{i}.attentions.{j}", tr, ("output", (lpb + 1) * i + j),
                                          t_index, n_levels - 1 - i)
            t_index += 1
    return layers
