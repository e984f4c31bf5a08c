"""The manifest of a reference: its format, its self-checksum and the validation of everything read from it.

Everything the reader and the engine take from a manifest is checked here, so a damaged, hand-made or planted
manifest fails with a message naming the reference instead of a ``KeyError`` in the middle of a generation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

from .errors import RefDropError

FORMAT_VERSION = 1
SEAL = "manifest_sha256"
REQUIRED_FIELDS = ("format_version", "name", "family", "layers", "chunks", "slots", "profile", "dtype")
_LAYER_RE = re.compile(r"^(input|middle|output)\d{1,3}\.\d{1,3}$")
_CHUNK_RE = re.compile(r"^(un)?cond\d{1,3}$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def seal_manifest(manifest: dict) -> dict:
    """Add the checksum of the manifest's own content (any bit flip in manifest.json is then detected)."""
    manifest[SEAL] = sha256_bytes(_canonical(manifest))
    return manifest


def broken(name: str, why: str) -> RefDropError:
    return RefDropError(f"RefDrop: reference '{name}' has a broken manifest ({why})")


def _is_int(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_manifest(manifest, name: str) -> dict:
    """Raise a ``RefDropError`` naming the reference if the manifest is not one this version can read.

    Everything the reader and the engine take from a manifest is checked here, so that a damaged or hand-made
    manifest fails with this message instead of a ``KeyError`` in the middle of a generation.
    """
    if not isinstance(manifest, dict):
        raise broken(name, "not a JSON object")
    version = manifest.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:
        raise RefDropError(
            f"RefDrop: reference '{name}' was written by a newer sd-refdrop (format {version}); "
            f"this version reads format {FORMAT_VERSION}. Update the extension."
        )
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise broken(name, f"missing {', '.join(missing)}")
    if version != FORMAT_VERSION:
        raise broken(name, f"unknown format_version {version!r}")
    if SEAL not in manifest:
        raise broken(name, f"missing {SEAL}")
    try:
        seal_ok = manifest.get(SEAL) == sha256_bytes(_canonical(manifest))
    except (TypeError, ValueError):
        seal_ok = False
    if not seal_ok:
        raise RefDropError(f"RefDrop: reference '{name}' is corrupt: manifest.json does not match its checksum")
    for field in ("family", "profile", "dtype"):
        if not isinstance(manifest[field], str):
            raise broken(name, f"{field} is not text")
    if not _is_int(manifest.get("bytes", 0)) or not isinstance(manifest.get("created", ""), str):
        raise broken(name, "bad size or date")
    _check_layers(manifest["layers"], name)
    chunks = manifest["chunks"]
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) and _CHUNK_RE.match(c)
                                                               for c in chunks):
        raise broken(name, "bad chunk list")
    _check_slots(manifest["slots"], name)
    return manifest


def _check_layers(layers, name: str) -> None:
    if not isinstance(layers, dict) or not layers:
        raise broken(name, "no layers")
    for lid, layer in layers.items():
        if not _LAYER_RE.match(lid) or not isinstance(layer, dict):
            raise broken(name, f"bad layer {lid!r}")
        if not all(_is_int(layer.get(k), 1) for k in ("n_heads", "dim_head", "tokens")):
            raise broken(name, f"bad shape of layer {lid}")


def _check_slots(slots, name: str) -> None:
    if not isinstance(slots, list) or not slots:
        raise broken(name, "no saved steps")
    seen = set()
    for slot in slots:
        if not isinstance(slot, dict):
            raise broken(name, "bad slot entry")
        index, sigma, files = slot.get("index"), slot.get("sigma"), slot.get("files")
        if not _is_int(index) or index in seen or not _is_int(slot.get("occurrence")):
            raise broken(name, "bad slot entry")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise broken(name, f"bad sigma in slot {index}")
        if not isinstance(files, list) or not files or not all(is_plain_file_entry(f) for f in files):
            raise broken(name, f"bad file list in slot {index}")
        seen.add(index)


def is_plain_file_entry(entry) -> bool:
    """A tensor file entry: a plain ``*.safetensors`` name inside the reference folder, with size and checksum."""
    if not isinstance(entry, dict):
        return False
    file = entry.get("file")
    return (
        isinstance(file, str)
        and re.fullmatch(r"[A-Za-z0-9_\-]+\.safetensors", file) is not None
        and _is_int(entry.get("bytes"))
        and isinstance(entry.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
    )


def file_entries(manifest: dict) -> list[dict]:
    return [entry for slot in manifest["slots"] for entry in slot["files"]]
