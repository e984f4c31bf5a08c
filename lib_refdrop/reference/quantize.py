"""8-bit codes with one fp32 scale per channel (the last axis) of a ``[rows, C]`` tensor: ``int8`` (absmax / 127,
rounded) or ``fp8`` (e4m3, absmax / 448: 3 mantissa bits, so a relative rather than an absolute error)."""

from __future__ import annotations

import torch

# format -> (stored dtype, the largest code); fp8 e4m3fn has no infinity and 448 is its largest finite value
FORMATS: dict[str, tuple[torch.dtype, float]] = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, 448.0)}


def encode(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): ``codes.float() * scale`` approximates ``x``; ``scale`` is fp32 ``[C]`` (an fp16 scale
    would add up to 6 % of a step)."""
    dtype, top = FORMATS[fmt]
    scale = x.abs().amax(dim=0).float().clamp_min(1e-12) / top
    scaled = x.float() / scale
    if fmt == "int8":
        return scaled.round_().clamp_(-top, top).to(dtype), scale
    return scaled.clamp_(-top, top).to(dtype), scale  # clamped: out-of-range values would become NaN


def decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float()
