"""Checks the tensors of one slot file against the manifest before Use touches them.

A slot file passes its checksum whenever the manifest was re-sealed along with it, so a hand-made or planted
reference can still hold tensors of other shapes, integer or boolean tensors, NaNs, names no layer has, low-rank
factors of a rank above the profile's bound or of two ranks that do not fit together, half of a row, or a DiT's block
inputs without the token positions they are projected with (or positions that are no rotations).
Each of these would reach the attention kernel (NaN: a black image; a wrong shape: a torch error deep in the
U-Net); here they are refused with a message that names the reference and the file.
"""

from __future__ import annotations

import math

import torch

from ..errors import RefDropError
from ..families import DIT_FAMILIES
from .address import POSITIONS
from .finite import DECODED_LIMIT, all_finite, beyond_limit
from .profiles import RANK, Profile, split_entry
from .trajectory_check import check_trajectory_tensors

HEADER_ALLOWANCE = 256  # bytes of safetensors header per tensor (a name and its dtype, shape and offsets)


def _corrupt(name: str, file: str, why: str) -> RefDropError:
    return RefDropError(f"RefDrop: reference '{name}' is corrupt: {file} {why}")


def _compute_dtype(name: str, file: str, manifest: dict) -> torch.dtype:
    dtype = getattr(torch, str(manifest["dtype"]), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise _corrupt(name, file, f"belongs to a manifest with an unknown dtype {manifest['dtype']!r}")
    return dtype


def _layer_forms(lid: str, manifest: dict, profile: Profile, compute_dtype: torch.dtype):
    layer = manifest["layers"][lid]
    width, tokens = layer["n_heads"] * layer["dim_head"], layer["tokens"]
    return profile.stored_forms(width, tokens, compute_dtype), profile.max_rank(tokens, width)


def keeps_positions(manifest: dict, profile: Profile) -> bool:
    """Whether the reference is a DiT's that keeps each block's input: its slot files of block inputs hold the
    tokens' positions too (``address.POSITIONS``)."""
    return profile.kept.projected and manifest["family"] in DIT_FAMILIES


def positions_form(manifest: dict, profile: Profile) -> tuple | None:
    """(dtype, shape) of the token positions of a reference that ``keeps_positions``: float32 ``[tokens, dim_head /
    2, 2, 2]``, one set for all its blocks, which have the same tokens and head size. None where no positions belong
    in a slot (or where the manifest's blocks differ, which no DiT's do)."""
    if not keeps_positions(manifest, profile):
        return None
    shapes = {(layer["tokens"], layer["dim_head"]) for layer in manifest["layers"].values()}
    if len(shapes) != 1:
        return None
    (tokens, dim_head), = shapes
    return torch.float32, (tokens, dim_head // 2, 2, 2)


def expected_form(key: str, manifest: dict, profile: Profile, compute_dtype: torch.dtype):
    """(dtype, shape) a stored tensor named ``key`` must have (``RANK`` for the row's rank), or None if no such
    tensor belongs in a slot."""
    if key == POSITIONS:
        return positions_form(manifest, profile)
    lid, chunk, tensor, suffix = split_entry(key)
    if lid not in manifest["layers"] or chunk not in manifest["chunks"] or tensor not in profile.tensors:
        return None
    forms, _ = _layer_forms(lid, manifest, profile, compute_dtype)
    return forms.get(suffix)


def _shape_text(dtype: torch.dtype, shape) -> str:
    dims = ", ".join("rank" if d == RANK else str(d) for d in shape)
    return f"{str(dtype).removeprefix('torch.')} [{dims}]"


def _rank_of(value: torch.Tensor, shape: tuple) -> int | None:
    """The rank a stored tensor has where its form says ``RANK``; None if its shape does not fit the form."""
    if value.dim() != len(shape):
        return None
    pairs = list(zip(value.shape, shape, strict=True))
    ranks = {actual for actual, wanted in pairs if wanted == RANK}
    if any(wanted != RANK and actual != wanted for actual, wanted in pairs) or len(ranks) > 1:
        return None
    return ranks.pop() if ranks else 0


def check_slot_tensors(name: str, file: str, tensors: dict[str, torch.Tensor], manifest: dict,
                       profile: Profile) -> None:
    """Raise ``RefDropError`` unless every tensor of ``file`` is one the manifest's layers call for, with the
    stored dtype and shape (a rank from 1 to the profile's bound, the same in every part of a row), finite, and
    every row complete."""
    compute_dtype = _compute_dtype(name, file, manifest)
    if profile.kept.evaluated_again:
        return check_trajectory_tensors(name, file, tensors, manifest, compute_dtype)
    positions = keeps_positions(manifest, profile)
    if positions and positions_form(manifest, profile) is None:
        raise _corrupt(name, file, "belongs to a manifest whose blocks differ in tokens or head size, as no DiT's do")
    rows: dict[tuple, dict[str, int]] = {}  # (layer, chunk, k|v) -> suffix -> rank (0: no rank in its shape)
    for key, value in tensors.items():
        form = expected_form(key, manifest, profile, compute_dtype)
        if form is None:
            raise _corrupt(name, file, f"holds a tensor {key!r} that no layer of the manifest has")
        dtype, shape = form
        rank = _rank_of(value, shape) if value.dtype == dtype else None
        if rank is None:
            raise _corrupt(
                name, file,
                f"holds {key} as {_shape_text(value.dtype, tuple(value.shape))}; the manifest's layer needs "
                f"{_shape_text(dtype, shape)}",
            )
        if key == POSITIONS:
            _check_rotations(name, file, value)
            continue
        lid, chunk, tensor, suffix = split_entry(key)
        _, max_rank = _layer_forms(lid, manifest, profile, compute_dtype)
        if RANK in shape and not 1 <= rank <= max_rank:
            raise _corrupt(name, file, f"holds {key} of rank {rank}; the profile stores ranks 1 to {max_rank}")
        if dtype.is_floating_point and not all_finite(value):
            raise _corrupt(name, file, f"holds non-finite values (NaN or infinity) in {key}")
        rows.setdefault((lid, chunk, tensor), {})[suffix] = rank
    for row, parts in rows.items():
        _check_row_parts(name, file, "/".join(row), parts, manifest, profile, compute_dtype)
    if rows and positions and POSITIONS not in tensors:
        raise _corrupt(name, file, "holds block inputs without the token positions they are projected with")


def _check_rotations(name: str, file: str, value: torch.Tensor) -> None:
    """Token positions are rotations, cosines and sines: a value that is not finite or beyond ±1 is none."""
    if not all_finite(value) or (value.numel() and value.abs().max().item() > 1.0 + 1e-6):
        raise _corrupt(name, file, f"holds {POSITIONS} that are no rotations (not finite, or beyond ±1)")


def _check_row_parts(name: str, file: str, row: str, parts: dict[str, int], manifest: dict, profile: Profile,
                     compute_dtype: torch.dtype) -> None:
    forms, _ = _layer_forms(row.split("/")[0], manifest, profile, compute_dtype)
    missing = [suffix for suffix in forms if suffix not in parts]
    if missing:
        raise _corrupt(name, file, f"holds only part of {row}: {', '.join(f'{row}.{s}' for s in missing)} missing")
    ranks = {rank for rank in parts.values() if rank}
    if len(ranks) > 1:
        raise _corrupt(name, file, f"holds the factors of {row} with different ranks ({sorted(ranks)})")


def check_decoded(name: str, files: list[str], rows: dict[str, torch.Tensor]) -> None:
    """Raise ``RefDropError`` if a row as Use gets it (decoded, projected, in the compute dtype) holds a value that
    is not finite or beyond ``DECODED_LIMIT``: finite codes times a huge scale, or a projection of them, overflow
    there and would give a NaN image."""
    bad = beyond_limit(rows)
    if bad is not None:
        raise _corrupt(name, ", ".join(files), f"decodes to values beyond ±{DECODED_LIMIT:g} (or not finite) in "
                                             f"{bad}: a stored scale or value is out of range")


def max_file_bytes(manifest: dict, profile: Profile) -> int:
    """The most bytes one valid slot file of this reference can hold (every row of every layer and chunk at the
    profile's largest rank, 8 bytes a value at most): a bound for what a compressed file may decompress to."""
    total = 0
    for layer in manifest["layers"].values():
        width, tokens = layer["n_heads"] * layer["dim_head"], layer["tokens"]
        forms = profile.stored_forms(width, tokens, torch.float32)
        per_row = profile.row_bytes_bound(tokens, width, itemsize=8) + HEADER_ALLOWANCE * len(forms)
        total += per_row * len(profile.tensors) * len(manifest["chunks"])
    positions = positions_form(manifest, profile)
    if positions is not None:
        total += 4 * math.prod(positions[1]) + HEADER_ALLOWANCE
    return total + HEADER_ALLOWANCE
