"""Storage profiles: what a Save keeps of each attn1 K/V, and how Use gets it back.

Bytes decide RefDrop's speed (a raw SDXL 1024² reference is ~16.8 GB of fp16 K/V), so a profile can
- store values as 8-bit integers with one scale per channel (``int8``: half of fp16; per-channel absmax int8
  measured 3-5x more accurate than fp8 e4m3 on the same features, see README "Storage profiles"),
- keep every n-th sampled sigma (``sigma_stride``; Use interpolates between the kept ones).
``exact`` keeps K and V as computed: Use at identical settings reproduces the Save image bit for bit.
Fidelity of each profile is measured by ``python -m benchmarks.profiles`` (random weights) and
``python -m toymodel.measure`` (a trained model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import RefDropError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    storage: str = "native"      # native | int8
    sigma_stride: int = 1        # keep every n-th distinct sigma
    # Fidelity this profile promises (written into each manifest, checked by tests/test_profiles.py): latent PSNR
    # of Use against the Save image at the Save's settings, and the share of the RFG effect kept at other seeds.
    claims: dict = field(default_factory=dict, compare=False)

    def keeps_sigma(self, ordinal: int) -> bool:
        """Whether the ``ordinal``-th distinct sigma of a Save is stored."""
        return ordinal % self.sigma_stride == 0

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stored tensors for one K or V row ``[N, C]``, keyed by name suffix ("" = the values)."""
        if self.storage == "int8":
            scale = tensor.abs().amax(dim=0).float().clamp_min(1e-12) / 127.0
            codes = (tensor.float() / scale).round_().clamp_(-127, 127).to(torch.int8)
            return {"": codes, ".scale": scale}  # fp32: an fp16 scale would add up to 6% of a step
        return {"": tensor.contiguous()}

    def decode(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        if ".scale" in stored:
            return stored[""].float() * stored[".scale"].float()
        return stored[""]


EXACT = Profile("exact", "K and V as computed: Use at identical settings reproduces the Save image bit for bit",
                claims={"latent_psnr_db": float("inf"), "effect_kept": 1.0})
BALANCED = Profile("balanced", "8-bit K/V, one scale per channel: 1/2 of raw fp16", storage="int8",
                   claims={"latent_psnr_db": 60.0, "effect_kept": 0.9})
COMPACT = Profile("compact", "8-bit K/V, every 5th sampled sigma: 1/10 of raw fp16", storage="int8", sigma_stride=5,
                  claims={"latent_psnr_db": 50.0, "effect_kept": 0.7})

PROFILES: dict[str, Profile] = {p.name: p for p in (EXACT, BALANCED, COMPACT)}
DEFAULT_PROFILE = "exact"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name or DEFAULT_PROFILE]
    except KeyError:
        raise RefDropError(f"RefDrop: unknown storage profile {name!r}; choose one of {', '.join(PROFILES)}") from None
