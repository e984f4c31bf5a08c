"""The reference library on disk: one folder per reference, safetensors + JSON only.

    <root>/<name>/manifest.json        what the reference is (model family, layers, sigmas, files, checksums)
    <root>/<name>/preview.png          the Save image
    <root>/<name>/slot_0000.safetensors ...   the features of one saved model evaluation each
    <root>/.incoming/<id>/             a reference being written; renamed into place when complete

A reference becomes visible only through the final rename, so a crash never leaves a half reference in the
list, and leftovers in ``.incoming`` and ``.trash`` are removed the next time the store opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

from .errors import RefDropError
from .names import validate_name

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREVIEW = "preview.png"
INCOMING = ".incoming"
TRASH = ".trash"
REQUIRED_FIELDS = ("format_version", "name", "family", "layers", "chunks", "slots", "profile", "dtype")

_lock = threading.RLock()  # list/delete/rename/commit are atomic with respect to each other in this process


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_manifest(manifest, name: str) -> dict:
    """Raise a ``RefDropError`` naming the reference if the manifest is not one this version can read."""
    if not isinstance(manifest, dict):
        raise RefDropError(f"RefDrop: reference '{name}' has a broken manifest (not a JSON object)")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise RefDropError(
            f"RefDrop: reference '{name}' was written by a newer sd-refdrop (format {version}); "
            f"this version reads format {FORMAT_VERSION}. Update the extension."
        )
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing or version != FORMAT_VERSION:
        what = ", ".join(missing) or "format_version"
        raise RefDropError(f"RefDrop: reference '{name}' has a broken manifest (missing {what})")
    slots = manifest["slots"]
    if not isinstance(slots, list) or not slots:
        raise RefDropError(f"RefDrop: reference '{name}' has a broken manifest (no saved steps)")
    for slot in slots:
        files = slot.get("files") if isinstance(slot, dict) else None
        if not isinstance(files, list) or not files or not all(_is_plain_file_entry(f) for f in files):
            raise RefDropError(f"RefDrop: reference '{name}' has a broken manifest (bad slot entry)")
    return manifest


def _is_plain_file_entry(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    file = entry.get("file")
    return (
        isinstance(file, str)
        and file.endswith(".safetensors")
        and "/" not in file
        and "\\" not in file
        and not file.startswith(".")
        and isinstance(entry.get("bytes"), int)
        and isinstance(entry.get("sha256"), str)
    )


class ReferenceStore:
    """The library of saved references under one root folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_leftovers()

    # -- reading ---------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The folder of a reference; the name is validated so that it cannot point anywhere else."""
        folder = self.root / validate_name(name)
        if folder.parent != self.root:
            raise RefDropError(f"RefDrop: invalid reference name {name!r}")
        return folder

    def names(self) -> list[str]:
        """Complete references, sorted case-insensitively. Broken ones are listed too (``info`` says why)."""
        with _lock:
            found = []
            for entry in self.root.iterdir():
                if entry.name.startswith(".") or not entry.is_dir() or not (entry / MANIFEST).is_file():
                    continue
                found.append(entry.name)
        return sorted(found, key=str.lower)

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).is_file()

    def manifest(self, name: str) -> dict:
        folder = self.path(name)
        try:
            text = (folder / MANIFEST).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RefDropError(self.missing_message(name)) from None
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError:
            raise RefDropError(f"RefDrop: reference '{name}' has a corrupt manifest (not valid JSON)") from None
        return check_manifest(manifest, name)

    def missing_message(self, name: str) -> str:
        known = ", ".join(self.names()) or "none"
        return f"RefDrop: reference '{name}' not found in {self.root} (saved references: {known})"

    def preview_path(self, name: str) -> Path | None:
        path = self.path(name) / PREVIEW
        return path if path.is_file() else None

    def read_file(self, name: str, entry: dict) -> bytes:
        """Read one tensor file of a reference and check its size and checksum against the manifest."""
        path = self.path(name) / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RefDropError(f"RefDrop: reference '{name}' is incomplete: {entry['file']} is missing") from None
        if len(data) != entry["bytes"] or sha256_bytes(data) != entry["sha256"]:
            raise RefDropError(
                f"RefDrop: reference '{name}' is corrupt: {entry['file']} does not match its checksum"
            )
        return data

    # -- writing ---------------------------------------------------------------------------------------

    def begin(self, name: str, overwrite: bool) -> Path:
        """A fresh staging folder for a new reference; fails early if the name is taken."""
        name = validate_name(name)
        if self.exists(name) and not overwrite:
            raise RefDropError(
                f"RefDrop: a reference named '{name}' already exists; choose another name or allow overwriting"
            )
        staging = self.root / INCOMING / f"{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        return staging

    def commit(self, staging: Path, name: str, overwrite: bool) -> Path:
        """Make a staged reference visible under ``name`` with one rename (the old one goes last)."""
        target = self.path(name)
        with _lock:
            displaced = None
            if target.exists():
                if not overwrite:
                    raise RefDropError(f"RefDrop: a reference named '{name}' appeared while saving; not overwritten")
                displaced = self._trash_path()
                os.replace(target, displaced)
            os.replace(staging, target)
        if displaced is not None:
            shutil.rmtree(displaced, ignore_errors=True)
        return target

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def delete(self, name: str) -> None:
        with _lock:
            folder = self.path(name)
            if not folder.is_dir():
                raise RefDropError(self.missing_message(name))
            doomed = self._trash_path()
            os.replace(folder, doomed)  # atomic: the reference disappears from the list at once
        shutil.rmtree(doomed, ignore_errors=True)

    def rename(self, old: str, new: str) -> str:
        with _lock:
            source, target = self.path(old), self.path(new)
            if not source.is_dir():
                raise RefDropError(self.missing_message(old))
            if target.exists() and target != source:
                raise RefDropError(f"RefDrop: a reference named '{validate_name(new)}' already exists")
            manifest = self.manifest(old)
            manifest["name"] = validate_name(new)
            write_json_atomic(source / MANIFEST, manifest)
            os.replace(source, target)
        return validate_name(new)

    def clean_leftovers(self) -> None:
        """Remove staging folders of writes that never finished (a crash, a kill) and deleted references."""
        from .writer import active_staging_folders  # late import: writer imports store

        busy = active_staging_folders()
        for folder in (self.root / INCOMING, self.root / TRASH):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry not in busy:
                        shutil.rmtree(entry, ignore_errors=True)

    def _trash_path(self) -> Path:
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        return trash / uuid.uuid4().hex


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
