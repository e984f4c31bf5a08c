"""The toy model: a small diffusers U-Net with SD's parts (self- and cross-attention transformer blocks at two
resolutions) on 16x16 RGB pixels, and a learned per-shape "prompt" fed to cross-attention (attn2)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from .data import SHAPES

WEIGHTS = Path(__file__).with_name("weights.safetensors")
TOKENS = 4          # "prompt" length
CROSS_DIM = 32
UNET_CONFIG = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    # SD1.5's pattern with one level less: attention at 16x16 and 8x8 (and the 4x4 middle), resnets only at 4x4
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    attention_head_dim=4,  # diffusers' legacy name for the number of heads
    cross_attention_dim=CROSS_DIM,
    norm_num_groups=8,
)


class ShapePrompts(torch.nn.Module):
    """One learned ``[TOKENS, CROSS_DIM]`` embedding per shape, plus the empty prompt (used for CFG) last."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(len(SHAPES) + 1, TOKENS, CROSS_DIM) * 0.5)

    @property
    def empty_index(self) -> int:
        return len(SHAPES)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]

    def of(self, shape: str | None) -> torch.Tensor:
        """``[1, TOKENS, CROSS_DIM]`` for a shape name, or the empty prompt for None."""
        index = self.empty_index if shape is None else SHAPES.index(shape)
        return self.table[index].unsqueeze(0).detach()


def build(seed: int = 0) -> tuple[UNet2DConditionModel, ShapePrompts]:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).float(), ShapePrompts()


def state_dict(unet: UNet2DConditionModel, prompts: ShapePrompts) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
    out["prompts.table"] = prompts.table.detach().contiguous()
    return out


def load(path: Path = WEIGHTS) -> tuple[UNet2DConditionModel, ShapePrompts]:
    """The trained model, in eval mode without gradients."""
    state = load_file(str(path))
    unet, prompts = build()
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    prompts.table.data.copy_(state["prompts.table"])
    return unet.eval().requires_grad_(False), prompts.eval().requires_grad_(False)
