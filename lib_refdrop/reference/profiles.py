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

from dataclasses import dataclass

import torch

from ..attn.address import entry_name
from ..errors import RefDropError

SCALE = "scale"  # the suffix of an int8 row's per-channel scales: ``input1.0/cond0/k.scale``


def split_entry(key: str) -> tuple[str, str, str, str]:
    """``"input1.0/cond0/k.scale"`` -> ``("input1.0", "cond0", "k", "scale")``; the inverse of the naming in
    ``Profile.encode_row`` (the suffix is "" for the values themselves)."""
    lid, _, rest = key.partition("/")
    chunk, _, tail = rest.partition("/")
    tensor, _, suffix = tail.partition(".")
    return lid, chunk, tensor, suffix


@dataclass(frozen=True)
class Profile:
    """How a Save stores each K/V row and how Use reads it back: ``encode_row`` and ``decode_slot`` are inverses
    (``exact`` bit for bit), and ``stored_forms`` says what a valid stored row looks like."""

    name: str
    storage: str = "native"      # native | int8
    sigma_stride: int = 1        # keep every n-th distinct sigma
    keep: str = "kv"             # kv: K and V as the layer computed them | input: the attn1 input, K/V recomputed

    @property
    def tensors(self) -> tuple[str, ...]:
        """The stored tensors of one layer and chunk: K and V, or the layer's input (Use projects it again)."""
        return ("x",) if self.keep == "input" else ("k", "v")

    def keeps_sigma(self, ordinal: int) -> bool:
        """Whether the ``ordinal``-th distinct sigma of a Save is stored."""
        return ordinal % self.sigma_stride == 0

    def encode_row(self, lid: str, chunk: str, tensor_name: str, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored tensors of one K or V row ``[N, C]`` of one layer and chunk, by their names in a slot file."""
        name = entry_name(lid, chunk, tensor_name)
        if self.storage == "int8":
            scale = row.abs().amax(dim=0).float().clamp_min(1e-12) / 127.0
            codes = (row.float() / scale).round_().clamp_(-127, 127).to(torch.int8)
            return {name: codes, f"{name}.{SCALE}": scale}  # fp32: an fp16 scale would add up to 6% of a step
        return {name: row.contiguous()}

    def decode_slot(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows by entry name (``input1.0/cond0/k``) from the stored tensors of one slot."""
        if self.storage != "int8":
            return dict(stored)
        return {name: codes.float() * stored[f"{name}.{SCALE}"].float()
                for name, codes in stored.items() if not name.endswith(f".{SCALE}")}

    def stored_forms(self, width: int, tokens: int, compute_dtype: torch.dtype) -> dict[str, tuple]:
        """Suffix -> (dtype, shape) of each stored tensor of one row of a layer ``tokens`` long, ``width`` wide."""
        if self.storage == "int8":
            return {"": (torch.int8, (tokens, width)), SCALE: (torch.float32, (width,))}
        return {"": (compute_dtype, (tokens, width))}


EXACT = Profile("exact")                                               # K and V as computed: bit-exact Use
BALANCED = Profile("balanced", storage="int8")                         # 1/2 of raw fp16
COMPACT = Profile("compact", storage="int8", sigma_stride=5)           # 1/10 of raw fp16

PROFILES: dict[str, Profile] = {p.name: p for p in (EXACT, BALANCED, COMPACT)}
DEFAULT_PROFILE = "exact"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name or DEFAULT_PROFILE]
    except KeyError:
        raise RefDropError(f"RefDrop: unknown storage profile {name!r}; choose one of {', '.join(PROFILES)}") from None
