"""The manifest of a reference: built by one function (``build_manifest``), sealed with a checksum of itself,
validated when read (``check_manifest``) and read back as one typed value (``ReferenceInfo``) for the panel and the
REST API.

Everything the reader and a Use's plan (run.py) take from a manifest is checked here, so a damaged, hand-made or
planted manifest fails with a message naming the reference instead of a ``KeyError`` in the middle of a generation.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field

from ..errors import RefDropError
from .address import CHUNK_NAME_RE, LAYER_ID_RE
from .sigmas import Slot

FORMAT_VERSION = 1
SEAL = "manifest_sha256"
REQUIRED_FIELDS = ("format_version", "name", "family", "layers", "chunks", "slots", "profile", "dtype")
# The most tokens a layer can have: a latent cell (8×8 pixels) each, at the largest generation RefDrop takes (4096×4096
# pixels, as ``images.MAX_PIXELS``). Bounds what a slot file may hold, and so what a compressed one may inflate to.
MAX_GENERATION_SIDE = 4096
MAX_LAYER_TOKENS = (MAX_GENERATION_SIDE // 8) ** 2


@dataclass(frozen=True)
class Recording:
    """What a Save recorded, as the manifest describes it: layer shapes, chunks, compute dtype, profile, slots, and
    the chunks whose rows each slot holds (none for a trajectory, which keeps no rows)."""

    layers: dict[str, dict]
    chunks: list[str]
    dtype: str
    profile: str
    slots: list[Slot]
    slot_chunks: dict[int, list[str]] = dataclass_field(default_factory=dict)


def build_manifest(name: str, family: str, generation: dict, recording: Recording,
                   slot_files: dict[int, list[dict]], total_bytes: int) -> dict:
    """The sealed manifest of a finished Save; ``slot_files`` are the files the writer wrote for each slot.

    Slots without files (nothing reached the disk for them) are left out; it is validated like one read back."""
    slots = []
    for slot in sorted(recording.slots, key=lambda s: s.index):
        if not slot_files.get(slot.index):
            continue
        entry = {"index": slot.index, "sigma": slot.sigma, "occurrence": slot.occurrence,
                 "files": slot_files[slot.index]}
        if slot.index in recording.slot_chunks:
            entry["chunks"] = list(recording.slot_chunks[slot.index])
        slots.append(entry)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "family": family,
        "generation": {k: v for k, v in generation.items() if v is not None},
        "layers": recording.layers,
        "chunks": list(recording.chunks),
        "dtype": recording.dtype,
        "profile": recording.profile,
        "slots": slots,
        "bytes": total_bytes,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return check_manifest(seal_manifest(manifest), name)


SUMMARY = "summary"  # the metadata key of a ReferenceInfo field that the list views show, with its description


def _summary(description: str = "", **default):
    return dataclass_field(**default, metadata={SUMMARY: description})


@dataclass(frozen=True)
class ReferenceInfo:
    """What the panel and the REST API show of a reference; the fields marked ``_summary`` are the list views'
    summary (``SUMMARY_FIELDS``, the REST API's ``Summary``). A hand-made manifest may hold values of other types:
    those read as None."""

    name: str
    family: str = _summary("model family: sd15, sdxl...")
    profile: str = _summary("storage profile (exact, compact...)")
    bytes: int | None = _summary("size of the saved features in bytes")
    created: str | None = _summary("when it was saved, ISO 8601")
    width: int | None = _summary(default=None)
    height: int | None = _summary(default=None)
    steps: int | None = _summary(default=None)
    sampler: str | None = _summary(default=None)
    scheduler: str | None = None
    seed: int | None = _summary(default=None)
    prompt: str | None = _summary(default=None)


SUMMARY_FIELDS = tuple(f.name for f in fields(ReferenceInfo) if SUMMARY in f.metadata)


def reference_info(manifest: dict) -> ReferenceInfo:
    """The typed view of a validated manifest."""
    generation = manifest.get("generation")
    generation = generation if isinstance(generation, dict) else {}

    def typed(value, kind):
        return value if isinstance(value, kind) and not isinstance(value, bool) else None  # JSON true is no width

    return ReferenceInfo(
        name=manifest["name"], family=manifest["family"], profile=manifest["profile"],
        bytes=typed(manifest.get("bytes"), int), created=typed(manifest.get("created"), str),
        width=typed(generation.get("width"), int), height=typed(generation.get("height"), int),
        steps=typed(generation.get("steps"), int), sampler=typed(generation.get("sampler_name"), str),
        scheduler=typed(generation.get("scheduler"), str), seed=typed(generation.get("seed"), int),
        prompt=typed(generation.get("prompt"), str),
    )


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

    Everything the reader and a Use's plan take from a manifest is checked here, so that a damaged or hand-made
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
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) and CHUNK_NAME_RE.match(c)
                                                               for c in chunks):
        raise broken(name, "bad chunk list")
    _check_slots(manifest["slots"], name)
    _check_slot_chunks(manifest, name)
    return manifest


def slot_chunks(manifest: dict, slot: dict) -> list[str]:
    """The chunks whose rows a slot holds: its own list (a host may evaluate the cond chunk alone at some sigmas),
    else every chunk of the reference (a manifest written before slots said so)."""
    return slot.get("chunks", manifest["chunks"])


def _check_slot_chunks(manifest: dict, name: str) -> None:
    held = set()
    for slot in manifest["slots"]:
        chunks = slot_chunks(manifest, slot)
        if (not isinstance(chunks, list) or not chunks or len(set(chunks)) != len(chunks)
                or not all(isinstance(c, str) and c in manifest["chunks"] for c in chunks)):
            raise broken(name, f"bad chunk list in slot {slot['index']}")
        held.update(chunks)
    if held != set(manifest["chunks"]):
        raise broken(name, f"no slot holds {', '.join(sorted(set(manifest['chunks']) - held))}")


def _check_layers(layers, name: str) -> None:
    if not isinstance(layers, dict) or not layers:
        raise broken(name, "no layers")
    for lid, layer in layers.items():
        if not LAYER_ID_RE.match(lid) or not isinstance(layer, dict):
            raise broken(name, f"bad layer {lid!r}")
        if not all(_is_int(layer.get(k), 1) for k in ("n_heads", "dim_head", "tokens")):
            raise broken(name, f"bad shape of layer {lid}")
        if layer["tokens"] > MAX_LAYER_TOKENS:
            raise broken(name, f"layer {lid} has {layer['tokens']} tokens, more than the {MAX_LAYER_TOKENS} of a "
                               f"generation of {MAX_GENERATION_SIDE}×{MAX_GENERATION_SIDE} pixels")


def _check_slots(slots, name: str) -> None:
    if not isinstance(slots, list) or not slots:
        raise broken(name, "no saved steps")
    seen, files_seen = set(), set()
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
        for entry in files:  # one file is one part of one slot: a store opens each file once
            if entry["file"] in files_seen:
                raise broken(name, f"{entry['file']} is listed more than once")
            files_seen.add(entry["file"])
        seen.add(index)


def is_plain_file_entry(entry) -> bool:
    """A tensor file entry: a plain ``*.safetensors`` name inside the reference folder, with size and checksum;
    a zstd-compressed one (``*.safetensors.zst``) also records the size it decompresses to."""
    if not isinstance(entry, dict):
        return False
    file = entry.get("file")
    return (
        isinstance(file, str)
        and re.fullmatch(r"[A-Za-z0-9_\-]+\.safetensors" + _FILE_SUFFIX.get(entry.get("encoding"), "(?!)"), file)
        is not None
        and _is_int(entry.get("bytes"))
        and isinstance(entry.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
        and (entry.get("encoding") is None or _is_int(entry.get("raw_bytes")))
    )


# A file entry's "encoding" (absent: the file is plain safetensors) -> what its file name ends with after
# ".safetensors" (reference/compression.py); any other value is not one this version can read
_FILE_SUFFIX = {None: "", "zstd": r"\.zst"}


def file_entries(manifest: dict) -> list[dict]:
    return [entry for slot in manifest["slots"] for entry in slot["files"]]
