"""The character model: a small diffusers U-Net with SD1.5's block layout on 32x32 RGB pixels, and a learned
per-pose "prompt" fed to cross-attention (attn2).

SD1.5's layout, narrowed: CrossAttnDownBlock2D x3 + DownBlock2D, a mid block with attention, UpBlock2D +
CrossAttnUpBlock2D x3, two layers per block. The hosts' ldm numbering (lib_refdrop/diffusers.py ``layer_map``)
then gives SD1.5's attn1 blocks at SD1.5's four token levels (1/1, 1/2, 1/4, 1/8 of the image side): input1, input2,
output9..11 at 32x32 tokens; input4, input5, output6..8 at 16x16; input7, input8, output3..5 at 8x8; middle0 at
4x4. The first output block with attention is OUT03, as on SD1.5 ("skip the first up-sampling block").
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from .data import POSES

WEIGHTS = Path(__file__).with_name("weights.safetensors")
TOKENS = 4          # "prompt" length
CROSS_DIM = 32
UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    # diffusers' legacy name for the number of heads, per level: one head at 32x32 tokens halves the training time
    attention_head_dim=(1, 2, 4, 4),
    cross_attention_dim=CROSS_DIM,
    norm_num_groups=8,
)


class PosePrompts(torch.nn.Module):
    """One learned ``[TOKENS, CROSS_DIM]`` embedding per pose, plus the empty prompt (used for CFG) last."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(len(POSES) + 1, TOKENS, CROSS_DIM) * 0.5)

    @property
    def empty_index(self) -> int:
        return len(POSES)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]

    def of(self, pose: str | None) -> torch.Tensor:
        """``[1, TOKENS, CROSS_DIM]`` for a pose name, or the empty prompt for None."""
        index = self.empty_index if pose is None else POSES.index(pose)
        return self.table[index].unsqueeze(0).detach()


def build(seed: int = 0) -> tuple[UNet2DConditionModel, PosePrompts]:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).float(), PosePrompts()


def state_dict(unet: UNet2DConditionModel, prompts: PosePrompts) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
    out["prompts.table"] = prompts.table.detach().contiguous()
    return out


def load(path: Path = WEIGHTS) -> tuple[UNet2DConditionModel, PosePrompts]:
    """The trained model, in eval mode without gradients."""
    state = load_file(str(path))
    unet, prompts = build()
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    prompts.table.data.copy_(state["prompts.table"])
    return unet.eval().requires_grad_(False), prompts.eval().requires_grad_(False)
