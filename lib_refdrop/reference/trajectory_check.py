"""Checks the tensors of one slot file of a trajectory reference (``attn/trajectory.py``) before Use touches them.

Like every slot file (``slot_check.py``), one from another user's store may hold anything: only the latent and
the conditioning rows of the manifest's chunks pass, floating point of the manifest's dtype (or float32: the
sampler's latent of a half-precision U-Net), of bounded sizes, and finite; each slot holds a latent of the same
shape as every other slot's, with the model's channels, and the conditioning fits the model's (the reader checks
these across slots and against the generation: ``check_latent_shapes``, ``check_conditioning``).
"""

from __future__ import annotations

import torch

from ..errors import RefDropError
from .address import CONDITIONING_KEYS, LATENT, conditioning_key, split_conditioning_key, stored_chunks
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


def _misfit(name: str, file: str, why: str) -> RefDropError:
    return RefDropError(f"RefDrop: reference '{name}' does not fit the current model: {file} {why}")


def _shape(shape) -> str:
    return f"[{', '.join(str(d) for d in shape)}]"


def check_latent_shapes(name: str, shapes: dict[str, tuple], channels: int) -> tuple:
    """The one shape of every slot's latent (``shapes``: the slot's files -> its latent's shape), which must take
    the model's ``channels``; the file of a slot that differs from the others is named."""
    counts: dict[tuple, int] = {}
    for shape in shapes.values():
        counts[shape] = counts.get(shape, 0) + 1
    common = max(counts, key=counts.get)
    for files, shape in shapes.items():
        if shape != common:
            raise _corrupt(name, files, f"holds a latent of shape {_shape(shape)}; the other slots' are "
                                        f"{_shape(common)}")
    if common[0] != channels:
        raise _misfit(name, next(iter(shapes)), f"holds a latent of {common[0]} channels; the model takes {channels}")
    return common


def check_conditioning(name: str, file: str, stored: dict[str, torch.Tensor], chunks: list[str],
                       model_kwargs: dict) -> None:
    """The stored conditioning of the chunks that hold text conditioning (by ``conditioning_key``) against each
    other and against the keyword arguments the model is called with in this generation: the same widths, and
    every key the model takes."""
    chunks = stored_chunks(chunks, stored)
    for key in CONDITIONING_KEYS:
        given = model_kwargs.get(key)
        values = {chunk: stored.get(conditioning_key(chunk, key)) for chunk in chunks}
        present = {chunk: value for chunk, value in values.items() if value is not None}
        if torch.is_tensor(given) and len(present) < len(chunks):
            missing = ", ".join(chunk for chunk in chunks if chunk not in present)
            raise _misfit(name, file, f"holds no {key} conditioning of {missing}, which the model takes")
        # c_crossattn: [tokens, width], and the token counts may differ (a long prompt); the rest: one shape
        forms = {chunk: tuple(value.shape[-1:] if key == "c_crossattn" else value.shape)
                 for chunk, value in present.items()}
        if len(set(forms.values())) > 1:
            listed = ", ".join(f"{chunk} {_shape(form)}" for chunk, form in forms.items())
            raise _corrupt(name, file, f"holds {key} conditioning of different widths ({listed})")
        if torch.is_tensor(given) and forms:
            wanted = tuple(given.shape[-1:] if key == "c_crossattn" else given.shape[1:])
            form = next(iter(forms.values()))
            if form != wanted:
                raise _misfit(name, file, f"holds {key} conditioning of width {_shape(form)}; the model takes "
                                          f"{_shape(wanted)}")
