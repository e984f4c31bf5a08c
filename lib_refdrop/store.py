"""The reference library on disk: one folder per reference, safetensors + JSON only (nothing is ever unpickled).

    <root>/<name>/manifest.json        what the reference is (model family, layers, sigmas, files, checksums)
    <root>/<name>/preview.png          the Save image
    <root>/<name>/slot_0000_0.safetensors ...   the features of one saved model evaluation each
    <root>/.incoming/<id>/             a reference being written; renamed into place when complete
    <root>/.incoming/<id>.lock         held (flock) by the writing process for as long as <id> is its
    <root>/.trash/deleted-<id>         a deleted reference on its way out
    <root>/.trash/replaced-<id>/<name> the reference an overwriting Save <id> displaced, until the new one is in

A reference becomes visible only through the final rename, so a crash never leaves a half reference in the
list. When a store opens, staging folders whose lock is free (their writer died) are removed, and a reference
displaced by an overwrite that never completed is put back. The manifest carries the size and SHA-256 of
every file and a checksum of itself, so a truncated or bit-flipped reference is reported by name before use.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

from .errors import RefDropError
from .manifest import broken, check_manifest, file_entries, is_plain_file_entry, seal_manifest, sha256_bytes
from .names import validate_name

MANIFEST = "manifest.json"
PREVIEW = "preview.png"
INCOMING = ".incoming"
TRASH = ".trash"
LOCK_SUFFIX = ".lock"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # far above any real manifest; a planted huge file is not read

_lock = threading.RLock()  # list/delete/rename/commit are atomic with respect to each other in this process
_held_locks: dict[Path, object] = {}  # staging folder -> open, locked lock file of a write in this process


# -- staging locks -----------------------------------------------------------------------------------------------


def _lock_file(fh) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False if another open file holds it.

    The lock dies with the process, so a free lock means the writer is gone (crash, SIGKILL, power off)."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _writer_alive(lock_path: Path) -> bool:
    try:
        fh = open(lock_path, "r+b")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        return not _lock_file(fh)
    finally:
        fh.close()


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        try:
            path.unlink()
        except OSError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable across a power cut (no-op where directories cannot be opened)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        """Complete references, sorted case-insensitively. Broken ones are listed too (``manifest`` says why);
        folders whose name is not a valid reference name are not references and are left out."""
        found = []
        with _lock:
            try:
                entries = list(self.root.iterdir())
            except OSError:
                return []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    name = validate_name(entry.name)
                    if entry.is_dir() and (entry / MANIFEST).is_file():
                        found.append(name)
                except (RefDropError, OSError):
                    continue
        return sorted(found, key=str.lower)

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).is_file()

    def manifest(self, name: str) -> dict:
        """The validated manifest; also checks that every tensor file is there with its recorded size, so a
        truncated or missing file is reported now (by name) and not in the middle of a generation."""
        with _lock:  # not torn by a rename/delete in this process between reading the manifest and the stats
            manifest = self._read_manifest(name)
            folder = self.path(name)
            for entry in file_entries(manifest):
                self._check_size(name, folder, entry)
        return manifest

    def _check_size(self, name: str, folder: Path, entry: dict) -> None:
        try:
            size = (folder / entry["file"]).stat().st_size
        except FileNotFoundError:
            raise self._missing_file(name, entry) from None
        except OSError as exc:
            raise RefDropError(f"RefDrop: reference '{name}' cannot be read: {exc}") from None
        if size != entry["bytes"]:
            raise RefDropError(
                f"RefDrop: reference '{name}' is corrupt: {entry['file']} has {size} bytes, "
                f"{entry['bytes']} were saved"
            )

    def _missing_file(self, name: str, entry: dict) -> RefDropError:
        if not (self.path(name) / MANIFEST).is_file():
            return RefDropError(f"RefDrop: reference '{name}' was deleted or renamed while it was being read")
        return RefDropError(f"RefDrop: reference '{name}' is incomplete: {entry['file']} is missing")

    def _read_manifest(self, name: str) -> dict:
        path = self.path(name) / MANIFEST
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise broken(name, "manifest.json is implausibly large")
            raw = path.read_bytes()
        except FileNotFoundError:
            raise RefDropError(self.missing_message(name)) from None
        except OSError as exc:
            raise RefDropError(f"RefDrop: reference '{name}' cannot be read: {exc}") from None
        try:
            manifest = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RefDropError(f"RefDrop: reference '{name}' has a corrupt manifest (not valid JSON)") from None
        return check_manifest(manifest, name)

    def verify(self, name: str) -> dict:
        """Read every tensor file of a reference and check its checksum (slow: the whole reference)."""
        manifest = self.manifest(name)
        for entry in file_entries(manifest):
            self.read_file(name, entry)
        return manifest

    def missing_message(self, name: str) -> str:
        known = ", ".join(self.names()) or "none"
        return f"RefDrop: reference '{name}' not found in {self.root} (saved references: {known})"

    def preview_path(self, name: str) -> Path | None:
        path = self.path(name) / PREVIEW
        return path if path.is_file() else None

    def read_file(self, name: str, entry: dict) -> bytes:
        """Read one tensor file of a reference and check its size and checksum against the manifest."""
        if not is_plain_file_entry(entry):
            raise broken(name, "bad file entry")
        path = self.path(name) / entry["file"]
        try:
            size = path.stat().st_size
            if size != entry["bytes"]:  # checked before reading: a planted huge file is never loaded
                raise RefDropError(
                    f"RefDrop: reference '{name}' is corrupt: {entry['file']} has {size} bytes, "
                    f"{entry['bytes']} were saved"
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._missing_file(name, entry) from None
        except OSError as exc:
            raise RefDropError(f"RefDrop: reference '{name}' cannot be read: {exc}") from None
        if len(data) != entry["bytes"] or sha256_bytes(data) != entry["sha256"]:
            raise RefDropError(
                f"RefDrop: reference '{name}' is corrupt: {entry['file']} does not match its checksum"
            )
        return data

    # -- writing ---------------------------------------------------------------------------------------

    def begin(self, name: str, overwrite: bool) -> Path:
        """A fresh staging folder for a new reference; fails early if the name is taken.

        A ``RefDropError`` is a user problem (name taken or invalid); an ``OSError`` means the store cannot be
        written (full, read-only)."""
        name = validate_name(name)
        if self.exists(name) and not overwrite:
            raise RefDropError(
                f"RefDrop: a reference named '{name}' already exists; choose another name or allow overwriting"
            )
        incoming = self.root / INCOMING
        incoming.mkdir(exist_ok=True)
        key = uuid.uuid4().hex
        staging = incoming / key
        # The lock file appears under its final name already locked (made under a temporary name first), so a
        # cleaner in another process can never mistake a starting write for a dead one.
        tmp_lock = incoming / f".{key}.tmp"
        fh = open(tmp_lock, "w+b")
        try:
            if not _lock_file(fh):
                raise OSError(errno.EAGAIN, "could not lock the staging folder")
            os.replace(tmp_lock, incoming / f"{key}{LOCK_SUFFIX}")
            staging.mkdir()
        except BaseException:
            fh.close()
            _remove_tree(tmp_lock)
            _remove_tree(incoming / f"{key}{LOCK_SUFFIX}")
            raise
        _held_locks[staging] = fh
        return staging

    def commit(self, staging: Path, name: str, overwrite: bool) -> Path:
        """Make a staged reference visible under ``name`` with one rename.

        An overwritten reference is moved to ``.trash/replaced-<id>/`` first; if the process dies before the new
        one is in place, the next start puts the old one back."""
        target = self.path(name)
        displaced_dir = self.root / TRASH / f"replaced-{staging.name}"
        with _lock:
            if target.exists() or target.is_symlink():
                if not overwrite:
                    raise RefDropError(f"RefDrop: a reference named '{name}' appeared while saving; not overwritten")
                displaced_dir.mkdir(parents=True, exist_ok=True)
                os.replace(target, displaced_dir / target.name)
                try:
                    os.replace(staging, target)
                except OSError:
                    os.replace(displaced_dir / target.name, target)  # put the old one back
                    raise
            else:
                os.replace(staging, target)
            _fsync_dir(self.root)
        self._release(staging)
        _remove_tree(displaced_dir)
        return target

    def discard(self, staging: Path | None) -> None:
        if staging is None:
            return
        _remove_tree(staging)
        self._release(staging)

    def _release(self, staging: Path) -> None:
        fh = _held_locks.pop(staging, None)
        lock_path = staging.with_name(staging.name + LOCK_SUFFIX)
        _remove_tree(lock_path)  # unlinked while still held: nobody can take a lock on a live write
        if fh is not None:
            fh.close()

    def delete(self, name: str) -> None:
        with _lock:
            folder = self.path(name)
            if not (folder.is_dir() or folder.is_symlink()):
                raise RefDropError(self.missing_message(name))
            doomed = self._trash_path("deleted")
            try:
                os.replace(folder, doomed)  # atomic: the reference disappears from the list at once
            except OSError as exc:
                raise RefDropError(f"RefDrop: reference '{name}' could not be deleted: {exc}") from None
        _remove_tree(doomed)

    def rename(self, old: str, new: str) -> str:
        new = validate_name(new)
        with _lock:
            source, target = self.path(old), self.path(new)
            if not source.is_dir():
                raise RefDropError(self.missing_message(old))
            if source.is_symlink():
                raise RefDropError(f"RefDrop: reference '{old}' is a link to another folder; rename it on disk")
            if (target.exists() or target.is_symlink()) and target != source:
                raise RefDropError(f"RefDrop: a reference named '{new}' already exists")
            manifest = self.manifest(old)
            manifest["name"] = new
            try:
                (self.root / INCOMING).mkdir(exist_ok=True)
                write_json_atomic(source / MANIFEST, seal_manifest(manifest), tmp_dir=self.root / INCOMING)
                os.replace(source, target)
            except OSError as exc:
                raise RefDropError(f"RefDrop: reference '{old}' could not be renamed: {exc}") from None
        return new

    def clean_leftovers(self) -> None:
        """Undo what writes that never finished left behind (a crash, a kill) and finish deletions.

        Only staging folders whose lock is free are touched: a Save running in another process is left alone."""
        from .writer import active_staging_folders  # late import: writer imports store

        busy = active_staging_folders()
        incoming, trash = self.root / INCOMING, self.root / TRASH
        with _lock:
            if trash.is_dir():
                for entry in trash.iterdir():
                    key = entry.name.removeprefix("replaced-")
                    if entry.name.startswith("replaced-"):
                        if incoming / key in busy or _writer_alive(incoming / f"{key}{LOCK_SUFFIX}"):
                            continue
                        self._restore_displaced(entry)
                    _remove_tree(entry)
            if incoming.is_dir():
                for entry in incoming.iterdir():
                    if entry.name.startswith("."):  # a lock file being created: ours in a moment, or stale
                        if entry.name.endswith(".tmp") and not _writer_alive(entry):
                            _remove_tree(entry)
                        continue
                    key = entry.name.removesuffix(LOCK_SUFFIX)
                    lock_path = incoming / f"{key}{LOCK_SUFFIX}"
                    if incoming / key in busy or _writer_alive(lock_path):
                        continue
                    _remove_tree(incoming / key)
                    _remove_tree(lock_path)

    def _restore_displaced(self, displaced_dir: Path) -> None:
        """An overwriting Save died between moving the old reference away and moving the new one in."""
        for old in displaced_dir.iterdir():
            target = self.root / old.name
            if not (target.exists() or target.is_symlink()):
                try:
                    os.replace(old, target)
                except OSError:
                    pass

    def _trash_path(self, kind: str) -> Path:
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        return trash / f"{kind}-{uuid.uuid4().hex}"


def _no_constant(value: str):
    raise ValueError(f"{value} is not allowed in a manifest")


def write_json_atomic(path: Path, data: dict, tmp_dir: Path | None = None) -> None:
    """Write JSON so that ``path`` is always either the old or the new file. ``tmp_dir`` (same file system) keeps
    the temporary file out of a visible folder, where a crash would leave it."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_tree(tmp)
        raise
