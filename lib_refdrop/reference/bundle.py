"""One reference as one file, ``<name>.refdrop.safetensors``: what a user shares (export) and receives (import).

The file is a safetensors file. Its tensors are the files of the reference's store folder byte for byte, as
one-dimensional uint8 tensors named like the files (``slot_0000_0.safetensors``, ``preview.png``, ``mask.png``), and
its metadata holds the sealed manifest (``KEYS``). The manifest's sizes and checksums therefore still cover every
slot file, export and import copy bytes and never re-encode them (a reference comes back with the same seal, and a
Use of it gives the same image bit for bit), and any safetensors reader lists what the file holds.

A received file is untrusted like a store folder, and checked by the same code: its layout strictly here
(``read_layout``: header size, JSON without duplicate keys, only known metadata, uint8 one-dimensional tensors that
tile the data exactly, the tensors the manifest lists and no other, their sizes, the pictures' sizes and PNG
signature; ``check_manifest``; a name that is a valid reference name; every layer one of its family's blocks),
then every slot through the reader Use runs (``ReferenceReader``: checksum, bounded decompression, names, dtypes,
shapes, finite values, decoded values; a trajectory's latents and conditioning against each other). Only then is it
unpacked into a store folder through the store's Save transaction (``begin`` ... ``commit``): it appears whole or
not at all, and a name that is taken is refused unless overwriting is asked for. The layer widths are checked
against the model at each Use, as for every reference.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import families
from ..errors import RefDropError, ReferenceExists
from .address import LATENT, block_label
from .manifest import check_manifest, file_entries, seal_manifest, sha256_bytes
from .names import validate_name
from .profiles import get_profile
from .ramcache import RamCache
from .reader import ReferenceReader
from .safe_files import NotRegularFile, open_regular, read_at, size_of
from .slot_check import check_decoded
from .store import MANIFEST, MASK, MAX_PREVIEW_BYTES, PREVIEW, OpenReference, ReferenceStore, write_json_atomic
from .trajectory_check import check_conditioning, check_latent_shapes

SUFFIX = ".refdrop.safetensors"
FORMAT = "sd-refdrop reference"
VERSION = 1
# Every name a reference file uses besides the slot files' own: its metadata keys (text values, as safetensors
# requires) and the pictures it may hold, as tensors named like the store's files.
KEYS = {
    "format": "refdrop.format",        # FORMAT: what the file is
    "version": "refdrop.version",      # VERSION, as text: how the file is laid out
    "manifest": "refdrop.manifest",    # the sealed manifest.json, as text
    "preview": PREVIEW,                # the Save image (PNG)
    "mask": MASK,                      # the subject mask kept with the reference (PNG)
}
PICTURES = (KEYS["preview"], KEYS["mask"])
METADATA = "__metadata__"
TENSOR_FIELDS = {"dtype", "shape", "data_offsets"}
BYTE_DTYPE = "U8"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit: every file accepted here opens in any safetensors reader
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COPY_CHUNK = 1 << 20


def file_name(name: str) -> str:
    """What an exported reference is called: ``<name>.refdrop.safetensors``."""
    return f"{validate_name(name)}{SUFFIX}"


def name_of_file(file: str) -> str | None:
    """The reference name a received file's name gives (``cat.refdrop.safetensors`` -> ``cat``), None if it has none."""
    if not file.lower().endswith(SUFFIX):
        return None
    try:
        return validate_name(file[: -len(SUFFIX)])
    except RefDropError:
        return None


def _refused(label: str, why: str) -> RefDropError:
    return RefDropError(f"RefDrop: {label} was not imported: {why}")


def _not_a_reference_file(label: str, why: str) -> RefDropError:
    return _refused(label, f"it is not a RefDrop reference file ({why})")


# -- writing -------------------------------------------------------------------------------------------------------


def _header(manifest: dict, sizes: list[tuple[str, int]]) -> bytes:
    """The safetensors header of a file holding ``sizes`` (tensor name, bytes) in that order, padded with spaces to a
    multiple of 8 bytes as safetensors writes it."""
    header, offset = {}, 0
    for tensor, size in sizes:
        header[tensor] = {"dtype": BYTE_DTYPE, "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    header[METADATA] = {KEYS["format"]: FORMAT, KEYS["version"]: str(VERSION),
                        KEYS["manifest"]: json.dumps(manifest, sort_keys=True, ensure_ascii=False, allow_nan=False)}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    if len(text) > MAX_HEADER_BYTES:
        raise RefDropError(f"RefDrop: reference '{manifest['name']}' has a manifest too large to export")
    return struct.pack("<Q", len(text)) + text


def write_reference_file(store: ReferenceStore, name: str, out) -> int:
    """Write reference ``name`` as one file to the binary file object ``out``; returns the bytes written. Every slot
    file is checked against its size and checksum as it is copied, so a corrupt reference is refused, not shared."""
    opened = store.open(name)
    try:
        pictures = {PREVIEW: store.read_preview(name), MASK: store.read_mask(name)}
        entries = file_entries(opened.manifest)
        sizes = [(entry["file"], entry["bytes"]) for entry in entries]
        sizes += [(tensor, len(data)) for tensor, data in pictures.items() if data is not None]
        written = out.write(_header(opened.manifest, sizes))
        for entry in entries:
            written += out.write(opened.read(entry))
        for data in pictures.values():
            if data is not None:
                written += out.write(data)
    finally:
        opened.close()
    return written


def export_reference(store: ReferenceStore, name: str, folder: str | os.PathLike) -> Path:
    """Write reference ``name`` to ``<folder>/<name>.refdrop.safetensors`` (replaced whole if it is there)."""
    target = Path(folder) / file_name(name)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "wb") as out:
            write_reference_file(store, name, out)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


# -- reading -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A received file's manifest and where each of its tensors lies (absolute offset, size)."""

    label: str
    manifest: dict
    spans: dict[str, tuple[int, int]]


class OpenFile(OpenReference):
    """A received file as the reader reads a reference: each slot file is read from its span of the one file and
    checked against its size and checksum like a file of a store folder. The descriptor belongs to the caller."""

    def __init__(self, name: str, manifest: dict, fd: int, spans: dict[str, tuple[int, int]]):
        super().__init__(name, manifest, {})
        self._fd, self._spans = fd, spans

    def read(self, entry: dict) -> bytes:
        offset, size = self._spans[entry["file"]]
        data = read_at(self._fd, size, offset)
        if len(data) != entry["bytes"] or sha256_bytes(data) != entry["sha256"]:
            raise RefDropError(
                f"RefDrop: reference '{self.name}' is corrupt: {entry['file']} does not match its checksum"
            )
        return data

    def picture(self, tensor: str) -> bytes | None:
        span = self._spans.get(tensor)
        return None if span is None else read_at(self._fd, span[1], span[0])


def _unique_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice")
        seen[key] = value
    return seen


def _no_constant(value: str):
    raise ValueError(f"{value} is not JSON")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_layout(fd: int, label: str) -> Layout:
    """The layout of the received file open as ``fd``, checked strictly (``RefDropError`` naming what is wrong)."""
    size = size_of(fd)
    head = read_at(fd, 8)
    if len(head) < 8:
        raise _not_a_reference_file(label, f"{size} bytes, shorter than a safetensors header")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise _not_a_reference_file(label, f"its header claims {length} bytes; the file has {size}, and a header "
                                           f"may have at most {MAX_HEADER_BYTES}")
    try:
        header = json.loads(read_at(fd, length, 8).decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _not_a_reference_file(label, f"its header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _not_a_reference_file(label, "its header is not a JSON object")
    manifest = _manifest_of(header.pop(METADATA, None), label)
    spans = _spans(header, size - 8 - length, 8 + length, label)
    _check_tensors(manifest, spans, label)
    return Layout(label, manifest, spans)


def _manifest_of(metadata, label: str) -> dict:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _not_a_reference_file(label, f"it has no {METADATA} of text values")
    expected = {KEYS["format"], KEYS["version"], KEYS["manifest"]}
    unknown, missing = sorted(set(metadata) - expected), sorted(expected - set(metadata))
    if unknown or missing:
        raise _not_a_reference_file(label, "its metadata " + "; ".join(
            [f"has unknown keys {', '.join(map(repr, unknown))}"] * bool(unknown)
            + [f"lacks {', '.join(missing)}"] * bool(missing)))
    if metadata[KEYS["format"]] != FORMAT:
        raise _not_a_reference_file(label, f"{KEYS['format']} is {metadata[KEYS['format']]!r}")
    if metadata[KEYS["version"]] != str(VERSION):
        raise _refused(label, f"{KEYS['version']} is {metadata[KEYS['version']]!r}; this sd-refdrop reads version "
                              f"{VERSION} (a newer sd-refdrop wrote it? update the extension)")
    try:
        manifest = json.loads(metadata[KEYS["manifest"]], object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _refused(label, f"its {KEYS['manifest']} is not valid JSON: {exc}") from None
    name = manifest.get("name") if isinstance(manifest, dict) else None
    try:
        validate_name(name)
    except RefDropError as exc:
        raise _refused(label, f"its manifest's name is not a reference name: {str(exc).removeprefix('RefDrop: ')}"
                       ) from None
    try:
        manifest = check_manifest(manifest, name)
        get_profile(manifest["profile"])
    except RefDropError as exc:
        raise _refused(label, str(exc).removeprefix("RefDrop: ")) from None
    _check_family_layers(manifest, label)
    return manifest


def _check_family_layers(manifest: dict, label: str) -> None:
    """Every layer of a known family's reference is one of that family's blocks (the widths are checked against the
    model at each Use)."""
    blocks = families.FAMILY_BLOCKS.get(manifest["family"])
    if blocks is None:
        return
    foreign = sorted(lid for lid in manifest["layers"] if block_label(lid) not in blocks)
    if foreign:
        raise _refused(label, f"its manifest says family {families.label(manifest['family'])}, whose models have no "
                              f"layer {', '.join(foreign[:3])}")


def _spans(header: dict, data_size: int, data_start: int, label: str) -> dict[str, tuple[int, int]]:
    """Tensor name -> (absolute offset, size): uint8, one-dimensional, tiling the data section exactly."""
    spans = {}
    for tensor, info in header.items():
        if not isinstance(info, dict) or set(info) != TENSOR_FIELDS:
            raise _not_a_reference_file(label, f"tensor {tensor!r} is not described by {sorted(TENSOR_FIELDS)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if info["dtype"] != BYTE_DTYPE:
            raise _not_a_reference_file(label, f"tensor {tensor!r} has dtype {info['dtype']!r}, not {BYTE_DTYPE}")
        if not (isinstance(shape, list) and len(shape) == 1 and _is_int(shape[0])):
            raise _not_a_reference_file(label, f"tensor {tensor!r} has shape {shape!r}, not one dimension of bytes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
                and offsets[1] - offsets[0] == shape[0]):
            raise _not_a_reference_file(label, f"tensor {tensor!r} has data offsets {offsets!r} for {shape[0]} bytes")
        spans[tensor] = (offsets[0], shape[0])
    end = 0
    for tensor, (offset, size) in sorted(spans.items(), key=lambda item: item[1]):
        if offset != end:
            raise _not_a_reference_file(label, f"tensor {tensor!r} starts at byte {offset} of the data, not at {end}")
        end += size
    if end != data_size:
        raise _not_a_reference_file(label, f"its tensors hold {end} bytes; the file holds {data_size} after the "
                                           "header")
    return {tensor: (data_start + offset, size) for tensor, (offset, size) in spans.items()}


def _check_tensors(manifest: dict, spans: dict[str, tuple[int, int]], label: str) -> None:
    """The tensors are the manifest's files, each of its recorded size, and at most the pictures besides."""
    entries = {entry["file"]: entry for entry in file_entries(manifest)}
    extra = sorted(set(spans) - set(entries) - set(PICTURES))
    if extra:
        raise _refused(label, f"it holds {', '.join(map(repr, extra[:3]))}, which its manifest does not list")
    missing = sorted(set(entries) - set(spans))
    if missing:
        raise _refused(label, f"it lacks {', '.join(missing[:3])}, which its manifest lists")
    for file, entry in entries.items():
        if spans[file][1] != entry["bytes"]:
            raise _refused(label, f"{file} has {spans[file][1]} bytes; its manifest records {entry['bytes']}")
    for picture in PICTURES:
        if picture in spans and spans[picture][1] > MAX_PREVIEW_BYTES:
            raise _refused(label, f"{picture} has {spans[picture][1]} bytes, more than the {MAX_PREVIEW_BYTES} a "
                                  "picture may have")


def check_contents(opened: OpenFile, label: str) -> None:
    """Every slot of the received file through the reader a Use runs (checksum, bounded decompression, names, dtypes,
    shapes, finite and decoded values); a trajectory's latents against each other and its conditioning's widths;
    the pictures' PNG signature."""
    for picture in PICTURES:
        data = opened.picture(picture)
        if data is not None and not data.startswith(PNG_SIGNATURE):
            raise _refused(label, f"{picture} is not a PNG image")
    manifest = opened.manifest
    dtype = getattr(torch, manifest["dtype"], None)
    reader = ReferenceReader(opened, cache=RamCache(0), prefetch_first=False)
    try:
        latents, conditioning = {}, None
        for slot in sorted(manifest["slots"], key=lambda s: s["index"]):
            stored = reader.stored_tensors(slot["index"])
            files = [entry["file"] for entry in slot["files"]]
            check_decoded(opened.name, files, reader.decoded_rows(stored, dtype))
            if LATENT in stored:
                latents[", ".join(files)] = tuple(stored[LATENT].shape)
                if conditioning is None:
                    conditioning = (", ".join(files), {k: v for k, v in stored.items() if k != LATENT})
        if latents:
            check_latent_shapes(opened.name, latents, next(iter(latents.values()))[0])
            check_conditioning(opened.name, conditioning[0], conditioning[1], manifest["chunks"], {})
    except RefDropError as exc:
        raise _refused(label, str(exc).removeprefix("RefDrop: ")) from None
    finally:
        reader.close()


# -- importing -----------------------------------------------------------------------------------------------------


def import_reference(store: ReferenceStore, source, name: str | None = None, overwrite: bool = False,
                     label: str | None = None) -> str:
    """Unpack a received reference file into ``store``; returns the name it is stored under.

    ``source``: a path, or an open binary file (an upload); ``name``: the name to store it under (default: the name in
    its manifest); ``overwrite``: replace a reference of that name (else refused, ``ReferenceExists``). Everything in
    the file is checked first (module docstring); the reference then appears whole, in one rename, or not at all."""
    owned = not hasattr(source, "fileno")
    label = label or (Path(source).name if owned else "the received file")
    try:
        if not owned:
            source.flush()  # what was written to it is read through its descriptor
        fd = open_regular(Path(source)) if owned else source.fileno()
    except NotRegularFile as exc:
        raise _refused(label, str(exc)) from None
    try:
        layout = read_layout(fd, label)
        target = validate_name(name if name else layout.manifest["name"])
        if store.exists(target) and not overwrite:
            raise ReferenceExists(f"RefDrop: {label} was not imported: a reference named '{target}' already exists; "
                                  "import it under another name, or allow overwriting")
        opened = OpenFile(layout.manifest["name"], layout.manifest, fd, layout.spans)
        check_contents(opened, label)
        _unpack(store, opened, target, overwrite)
    finally:
        if owned:
            os.close(fd)
    return target


def _unpack(store: ReferenceStore, opened: OpenFile, target: str, overwrite: bool) -> None:
    """Through the store's Save transaction: the slot files byte for byte (checked again as they are read), the
    pictures, then the manifest (renamed and sealed again under another name), and one rename into place."""
    staging = store.begin(target, overwrite)
    try:
        for entry in file_entries(opened.manifest):
            _write(staging.folder / entry["file"], opened.read(entry))
        for picture in PICTURES:
            data = opened.picture(picture)
            if data is not None:
                _write(staging.folder / picture, data)
        manifest = dict(opened.manifest)
        if manifest["name"] != target:
            manifest["name"] = target
            seal_manifest(manifest)
        write_json_atomic(staging.folder / MANIFEST, manifest)
        store.commit(staging, target, overwrite)
    except BaseException:
        store.discard(staging)
        raise


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# -- files dropped into the store ------------------------------------------------------------------------------------

_refused_files: dict[tuple, str] = {}  # a dropped file's identity (path, inode, size, mtime) -> why it stays
_adopting = threading.Lock()


def received_files(store: ReferenceStore) -> list[Path]:
    """The ``*.refdrop.safetensors`` files directly in the store's folder."""
    try:
        entries = sorted(os.listdir(store.root))
    except OSError:
        return []
    return [store.root / entry for entry in entries if entry.lower().endswith(SUFFIX) and not entry.startswith(".")]


def adopt_received(store: ReferenceStore) -> dict[str, str]:
    """Import every reference file dropped into the store's folder under its file name (``cat.refdrop.safetensors``
    -> ``cat``) and remove the file once its reference is in place (the folder holds every byte of it). A file that
    is refused (its name is taken, a check fails) stays where it is; why is printed once per version of the file and
    returned (file name -> message). Cheap when there is none: one listing of the folder."""
    files = received_files(store)
    if not files or not _adopting.acquire(blocking=False):  # another thread of this process is at it
        return {}
    refused = {}
    try:
        for path in files:
            why = _adopt(store, path)
            if why is not None:
                refused[path.name] = why
    finally:
        _adopting.release()
    return refused


def _adopt(store: ReferenceStore, path: Path) -> str | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    identity = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if identity in _refused_files:
        return _refused_files[identity]
    name = name_of_file(path.name)
    try:
        if name is None:
            raise _refused(path.name, "its file name without .refdrop.safetensors is not a reference name")
        if store.exists(name):
            raise ReferenceExists(f"RefDrop: {path.name} was not imported: a reference named '{name}' already "
                                  "exists; rename the file (its name is the reference's) or delete that reference")
        import_reference(store, path, name)
    except (RefDropError, OSError) as exc:
        if not os.path.lexists(path):
            return None  # another process imported it meanwhile
        why = str(exc)
        _refused_files[identity] = why
        print(f"{why} (it stays in {store.root})")
        return why
    try:
        now = os.lstat(path)
        if (now.st_ino, now.st_size, now.st_mtime_ns) == identity[1:]:
            os.unlink(path)
    except OSError:
        pass
    return None


def chunks_of(fh, size: int) -> Iterator[bytes]:
    """``size`` bytes of the open binary file ``fh`` from its start, in pieces (an export sent over HTTP)."""
    fh.seek(0)
    left = size
    while left > 0:
        chunk = fh.read(min(COPY_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk

