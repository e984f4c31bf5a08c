"""The dev models' one definition: a small diffusers U-Net on RGB pixels (no VAE) and one learned "prompt" per label
fed to cross-attention (attn2), with the empty prompt last (for CFG). Each dataset (``devmodel.toy``,
``devmodel.char``) gives its ``DevModel``: the U-Net's config, its labels, its images and its training settings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

TOKENS = 4          # "prompt" length
CROSS_DIM = 32      # the prompt's width: the U-Net's cross_attention_dim


def pixel_unet(size: int, down_block_types: tuple[str, ...], up_block_types: tuple[str, ...],
               block_out_channels: tuple[int, ...], layers_per_block: int, heads) -> dict:
    """A ``UNet2DConditionModel`` config on RGB pixels, conditioned on a learned prompt: what both models share."""
    return dict(sample_size=size, in_channels=3, out_channels=3, down_block_types=down_block_types,
                up_block_types=up_block_types, block_out_channels=block_out_channels,
                layers_per_block=layers_per_block,
                attention_head_dim=heads,  # diffusers' legacy name for the number of heads (one, or one per level)
                cross_attention_dim=CROSS_DIM, norm_num_groups=8)


@dataclass(frozen=True)
class Training:
    """``python -m devmodel.train``'s defaults for one model (its TRAINING.md records the run)."""

    steps: int
    batch: int
    lr: float
    cosine_decay: bool  # after the warmup: cosine decay to 10 % at the last step, else a constant rate


@dataclass(frozen=True)
class DevModel:
    """One trained dev model: what its dataset draws and how its U-Net, sampling and training are set."""

    name: str  # also the model family its references record
    labels: tuple[str, ...]  # what a prompt can name
    label_name: str  # what a label is ("shape", "pose"): the key a Save's generation record keeps it under
    size: int  # image side, pixels
    unet_config: dict
    random_batch: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]  # (images, label indices)
    weights: Path
    sha256: str  # of the committed weights file
    training: Training
    steps: int  # sampling steps of a generation
    preview_scale: int  # a preview's pixels per image pixel


class Prompts(torch.nn.Module):
    """One learned ``[TOKENS, CROSS_DIM]`` embedding per label, plus the empty prompt (used for CFG) last."""

    def __init__(self, labels: tuple[str, ...]):
        super().__init__()
        self.labels = labels
        self.table = torch.nn.Parameter(torch.randn(len(labels) + 1, TOKENS, CROSS_DIM) * 0.5)

    @property
    def empty_index(self) -> int:
        return len(self.labels)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]

    def of(self, label: str | None) -> torch.Tensor:
        """``[1, TOKENS, CROSS_DIM]`` for a label, or the empty prompt for None."""
        index = self.empty_index if label is None else self.labels.index(label)
        return self.table[index].unsqueeze(0).detach()


def build(model: DevModel, seed: int = 0) -> tuple[UNet2DConditionModel, Prompts]:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**model.unet_config).float(), Prompts(model.labels)


def state_dict(unet: UNet2DConditionModel, prompts: Prompts) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
    out["prompts.table"] = prompts.table.detach().contiguous()
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(model: DevModel, path: Path | None = None) -> tuple[UNet2DConditionModel, Prompts]:
    """The trained model, in eval mode without gradients: the committed weights (checked against their sha256, so
    that every measure and test threshold is of the model TRAINING.md describes), or those at ``path``."""
    if path is None:
        path = model.weights
        found = sha256(path)
        if found != model.sha256:
            raise ValueError(f"{path} is not the committed {model.name} model (sha256 {found}, expected "
                             f"{model.sha256}): python -m devmodel.train {model.name} reproduces it")
    state = load_file(str(path))
    unet, prompts = build(model)
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    prompts.table.data.copy_(state["prompts.table"])
    return unet.eval().requires_grad_(False), prompts.eval().requires_grad_(False)
