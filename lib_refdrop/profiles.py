"""Storage profiles: what a Save keeps of each attn1 K/V, and how Use gets it back.

``exact`` keeps K and V as the model computed them, so Use at identical settings reproduces the Save image bit
for bit. Compact profiles trade a measured amount of fidelity for bytes (see README, "Storage profiles").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import RefDropError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str

    def keeps(self, chunk: str) -> bool:
        """Whether this profile stores the given chunk (``cond0``, ``uncond0``...)."""
        return True

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stored tensors for one K or V row ``[N, C]``, keyed by suffix ("" = the tensor itself)."""
        return {"": tensor}

    def decode(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        return stored[""]


EXACT = Profile("exact", "K and V as computed: Use at identical settings reproduces the Save image exactly")

PROFILES: dict[str, Profile] = {p.name: p for p in (EXACT,)}
DEFAULT_PROFILE = "exact"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name or DEFAULT_PROFILE]
    except KeyError:
        raise RefDropError(f"RefDrop: unknown storage profile {name!r}; choose one of {', '.join(PROFILES)}") from None
