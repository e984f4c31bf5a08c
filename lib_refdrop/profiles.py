"""Storage profiles: what a Save keeps of each attn1 K/V, and how Use gets it back.

Bytes decide RefDrop's speed (a raw SDXL 1024² reference is ~16.8 GB of fp16 K/V), so a profile can
- store values as 8-bit floats with one scale per channel (``fp8``: half of fp16),
- average-pool the reference tokens on their 2-D grid (``pool=2``: a quarter; attention does not need as many
  reference tokens as queries),
- keep every n-th sampled sigma (``sigma_stride``; Use maps each sigma to the nearest kept one).
``exact`` keeps K and V as computed: Use at identical settings reproduces the Save image bit for bit.
The fidelity each profile claims is measured by ``python -m benchmarks.profiles`` and stored in the manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import RefDropError

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    storage: str = "native"      # native | fp16 | fp8
    pool: int = 1                # average-pool reference tokens pool x pool
    sigma_stride: int = 1        # keep every n-th distinct sigma
    claims: dict = field(default_factory=dict, compare=False)  # measured fidelity, copied into the manifest

    def keeps(self, chunk: str) -> bool:
        return True

    def keeps_sigma(self, ordinal: int) -> bool:
        """Whether the ``ordinal``-th distinct sigma of a Save is stored."""
        return ordinal % self.sigma_stride == 0

    def encode(self, tensor: torch.Tensor, grid: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        """Stored tensors for one K or V row ``[N, C]`` (``grid`` = its token layout h x w), keyed by suffix."""
        if self.pool > 1 and grid is not None and grid[0] % self.pool == 0 and grid[1] % self.pool == 0:
            h, w = grid
            image = tensor.T.reshape(1, tensor.shape[1], h, w)
            tensor = F.avg_pool2d(image.float(), self.pool).reshape(tensor.shape[1], -1).T.to(tensor.dtype)
        if self.storage == "fp16":
            return {"": tensor.to(torch.float16)}
        if self.storage == "fp8":
            scale = tensor.abs().amax(dim=0).float().clamp_min(1e-12) / FP8_MAX
            return {"": (tensor.float() / scale).to(FP8).contiguous(), ".scale": scale.to(torch.float16)}
        return {"": tensor.contiguous()}

    def decode(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        if ".scale" in stored:
            return stored[""].float() * stored[".scale"].float()
        return stored[""]


def token_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The h x w layout of a layer's tokens, from the latent size (every U-Net level halves both sides)."""
    height, width = latent_hw
    factor = math.isqrt(max(height * width // max(tokens, 1), 1))
    if factor and (height // factor) * (width // factor) == tokens:
        return height // factor, width // factor
    return None


EXACT = Profile("exact", "K and V as computed: Use at identical settings reproduces the Save image exactly")
COMPACT = Profile(
    "compact",
    "8-bit K/V with per-channel scales, reference tokens pooled 2x2: 1/8 of raw fp16 K/V",
    storage="fp8", pool=2,
)
SMALL = Profile(
    "small",
    "8-bit K/V with per-channel scales, every second sigma: 1/4 of raw fp16 K/V",
    storage="fp8", sigma_stride=2,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (EXACT, COMPACT, SMALL)}
DEFAULT_PROFILE = "exact"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name or DEFAULT_PROFILE]
    except KeyError:
        raise RefDropError(f"RefDrop: unknown storage profile {name!r}; choose one of {', '.join(PROFILES)}") from None
