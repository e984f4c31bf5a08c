"""Checks the tensors of one slot file of a trajectory reference (``attn/trajectory.py``) before Use touches them.

Like every slot file (``slot_check.py``), one from another user's store may hold anything: only the latent and
the conditioning rows of the manifest's chunks pass, floating point of the manifest's dtype (or float32: the
sampler's latent of a half-precision U-Net), of bounded sizes, and finite; each slot holds a latent of the same
shape as every other slot's (the reader checks across slots).
"""

from __future__ import annotations

import torch

from ..attn.trajectory import LATENT, split_conditioning_key
from ..errors import RefDropError
from .finite import all_finite

MAX_LATENT_CHANNELS = 64
MAX_LATENT_SIDE = 1024           # a 8192² image at 8x down-sampling
MAX_TEXT_TOKENS = 4096
MAX_WIDTH = 16384


def _corrupt(name: str, file: str, why: str) -> RefDropError:
    return RefDropError(f"RefDrop: reference '{name}' is corrupt: {file} {why}")


def _fits(key: str, value: torch.Tensor, chunks) -> bool:
    if key == LATENT:
        c, h, w = value.shape if value.dim() == 3 else (0, 0, 0)
        return 1 <= c <= MAX_LATENT_CHANNELS and 1 <= h <= MAX_LATENT_SIDE and 1 <= w <= MAX_LATENT_SIDE
    parsed = split_conditioning_key(key)
    if parsed is None or parsed[0] not in chunks:
        return False
    if parsed[1] == "c_crossattn":
        return value.dim() == 2 and 1 <= value.shape[0] <= MAX_TEXT_TOKENS and 1 <= value.shape[1] <= MAX_WIDTH
    if parsed[1] == "guidance":  # Flux's distilled guidance: one value per row
        return value.dim() == 0
    return value.dim() == 1 and 1 <= value.shape[0] <= MAX_WIDTH


def check_trajectory_tensors(name: str, file: str, tensors: dict[str, torch.Tensor], manifest: dict,
                             compute_dtype: torch.dtype) -> None:
    if LATENT not in tensors:
        raise _corrupt(name, file, "holds no latent")
    for key, value in tensors.items():
        if value.dtype not in (compute_dtype, torch.float32) or not _fits(key, value, manifest["chunks"]):
            raise _corrupt(name, file, f"holds {key!r} as {str(value.dtype).removeprefix('torch.')} "
                                       f"{list(value.shape)}, which no trajectory of this manifest has")
        if not all_finite(value):
            raise _corrupt(name, file, f"holds non-finite values (NaN or infinity) in {key}")
