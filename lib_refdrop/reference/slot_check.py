"""Checks the tensors of one slot file against the manifest before Use touches them.

A slot file passes its checksum whenever the manifest was re-sealed along with it, so a hand-made or planted
reference can still hold tensors of other shapes, integer or boolean tensors, NaNs, or names no layer has.
Each of these would reach the attention kernel (NaN: a black image; a wrong shape: a torch error deep in the
U-Net); here they are refused with a message that names the reference and the file.
"""

from __future__ import annotations

import torch

from ..errors import RefDropError
from .profiles import Profile, split_entry


def _corrupt(name: str, file: str, why: str) -> RefDropError:
    return RefDropError(f"RefDrop: reference '{name}' is corrupt: {file} {why}")


def _compute_dtype(name: str, file: str, manifest: dict) -> torch.dtype:
    dtype = getattr(torch, str(manifest["dtype"]), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise _corrupt(name, file, f"belongs to a manifest with an unknown dtype {manifest['dtype']!r}")
    return dtype


def expected_form(key: str, manifest: dict, profile: Profile, compute_dtype: torch.dtype):
    """(dtype, shape) a stored tensor named ``key`` must have, or None if no such tensor belongs in a slot."""
    lid, chunk, tensor, suffix = split_entry(key)
    layer = manifest["layers"].get(lid)
    if layer is None or chunk not in manifest["chunks"] or tensor not in profile.tensors:
        return None
    forms = profile.stored_forms(layer["n_heads"] * layer["dim_head"], layer["tokens"], compute_dtype)
    return forms.get(suffix)


def check_slot_tensors(name: str, file: str, tensors: dict[str, torch.Tensor], manifest: dict,
                       profile: Profile) -> None:
    """Raise ``RefDropError`` unless every tensor of ``file`` is one the manifest's layers call for, with the
    stored dtype and shape, and finite."""
    compute_dtype = _compute_dtype(name, file, manifest)
    for key, value in tensors.items():
        form = expected_form(key, manifest, profile, compute_dtype)
        if form is None:
            raise _corrupt(name, file, f"holds a tensor {key!r} that no layer of the manifest has")
        dtype, shape = form
        if value.dtype != dtype or tuple(value.shape) != shape:
            raise _corrupt(
                name, file,
                f"holds {key} as {str(value.dtype).removeprefix('torch.')} {list(value.shape)}; the manifest's "
                f"layer needs {str(dtype).removeprefix('torch.')} {list(shape)}",
            )
        if dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise _corrupt(name, file, f"holds non-finite values (NaN or infinity) in {key}")
