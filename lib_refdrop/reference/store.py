"""The reference library on disk: one folder per reference, safetensors + JSON only (nothing is ever unpickled).

    <root>/<name>/manifest.json        what the reference is (model family, layers, sigmas, files, checksums)
    <root>/<name>/preview.png          the Save image
    <root>/<name>/mask.png             the subject mask a user gave the reference later (optional)
    <root>/<name>/slot_0000_0.safetensors ...   the features of one saved model evaluation each
    <root>/.incoming/<id>/             a reference being written; renamed into place when complete
    <root>/.incoming/<id>.lock         held (flock) by the writing process for as long as <id> is its
    <root>/.incoming/.<file>.<hex>.tmp a lock, manifest or mask being written (``temp_name``), locked meanwhile
    <root>/.trash/deleted-<id>         a deleted reference on its way out
    <root>/.trash/replaced-<id>/<name> the reference an overwriting Save <id> displaced, until the new one is in
    <root>/.baked/<seal>/              the rows a trajectory reference's first Use computed, in the local default
                                       profile, keyed by that reference's manifest seal (``open_bake``); never listed

A reference becomes visible only through the final rename, so a crash never leaves a half reference in the
list. When a store opens, staging folders whose lock is free (their writer died) are removed, and a reference
displaced by an overwrite that never completed is put back. The manifest carries the size and SHA-256 of
every file and a checksum of itself, so a truncated or bit-flipped reference is reported by name before use.

Baked rows are derived data: they are dropped with the reference they belong to (delete, rename and overwrite give
it a new seal), when the store opens and no reference has their seal (one removed by hand), and when they cannot be
read; the next Use then bakes them again.

A store may come from someone else, so nothing in it is trusted: ``.incoming``, ``.trash`` and ``.baked`` are used
only when they are real folders (anything else is moved aside, never followed), clean-up removes only entries named
the way this module names them, and files are opened only when they are plain files (``safe_files``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import RefDropError, ReferenceExists, ReferenceNotFound
from .manifest import SEAL, broken, check_manifest, file_entries, seal_manifest, sha256_bytes
from .names import validate_name
from .ramcache import RAM_CACHE, RamCache
from .safe_files import (
    FileTooLarge,
    NotRegularFile,
    describe,
    is_real_dir,
    open_regular,
    read_at,
    read_regular,
    regular_size,
    size_of,
)

MANIFEST = "manifest.json"
PREVIEW = "preview.png"
MASK = "mask.png"
INCOMING = ".incoming"
TRASH = ".trash"
BAKED = ".baked"
LOCK_SUFFIX = ".lock"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # far above any real manifest; a planted huge file is not read
MAX_PREVIEW_BYTES = 64 * 1024 * 1024   # an RGB PNG of 4096² is at most ~50 MB; a planted sparse 8 GB one is refused
OPEN_ATTEMPTS = 20                     # an overwrite in another process can change a reference while it is opened
NAME_LOCK_TIMEOUT_S = 30.0             # another process holds the name lock for one rename: milliseconds
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NAME_TAKEN = (errno.ENOTEMPTY, errno.EEXIST)  # a folder renamed onto a reference that is there
# What this module creates in its private folders; nothing else there is ever touched.
_OWN_INCOMING = re.compile(r"^([0-9a-f]{32})(\.lock)?$")
_OWN_TEMP = re.compile(r"^\.(.+)\.[0-9a-f]{32}\.tmp$")  # ``temp_name``: the only temporary names this module makes
_OWN_TRASH = re.compile(r"^(deleted|replaced)-([0-9a-f]{32})$")
_OWN_BAKE = re.compile(r"^[0-9a-f]{64}$")  # a bake's folder: the seal of the reference whose rows it holds

_lock = threading.RLock()  # list/delete/rename/commit are atomic with respect to each other in this process


@dataclass(frozen=True)
class StagingPaths:
    """Every path of one write, spelled in one place: ``<incoming>/<key>/``, its lock, the lock's temporary name,
    and where an overwrite parks the reference it displaces."""

    incoming: Path
    key: str

    @property
    def folder(self) -> Path:
        return self.incoming / self.key

    @property
    def lock(self) -> Path:
        return self.incoming / f"{self.key}{LOCK_SUFFIX}"

    @property
    def tmp_lock(self) -> Path:
        return self.incoming / temp_name(self.lock.name, self.key)

    def displaced(self, trash: Path) -> Path:
        return trash / f"replaced-{self.key}"


class Staging:
    """A write in progress: its folder and the lock that tells other processes (and this one) it is alive."""

    def __init__(self, paths: StagingPaths, lock_file):
        self.paths = paths
        self.folder = paths.folder
        self._lock_file = lock_file

    def release(self) -> None:
        _remove_tree(self.paths.lock)  # unlinked while still held: nobody can take a lock on a live write
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


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


def _flock(fd: int) -> bool:
    """An exclusive, non-blocking flock on a descriptor (POSIX); False if another open descriptor holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _writer_alive(lock_path: Path) -> bool:
    try:
        fd = open_regular(lock_path)  # a planted FIFO or link is no writer
    except FileNotFoundError:
        return False
    except NotRegularFile:
        return False
    except OSError:
        return True  # cannot tell: leave it alone
    with os.fdopen(fd, "rb") as fh:
        return not _lock_file(fh)


def _remove_tree(path: Path) -> None:
    """Remove ``path``; a link is removed itself, never what it points to (``rmtree`` does not follow links)."""
    if path.is_symlink() or not is_real_dir(path):
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


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _appeared(name: str) -> ReferenceExists:
    return ReferenceExists(f"RefDrop: a reference named '{name}' appeared while saving; not overwritten")


def _unusable(name: str, exc: NotRegularFile) -> RefDropError:
    return RefDropError(
        f"RefDrop: reference '{name}' cannot be used: {exc} (RefDrop reads only plain files inside a reference's "
        "folder; replace it with the reference's real file)"
    )


class OpenReference:
    """One consistent version of a reference: its manifest and an open descriptor of each of its files.

    All files are opened together and the manifest is read again afterwards, so the descriptors belong to that
    manifest. An open file stays readable after an overwrite, rename or delete moves or unlinks it (POSIX), so a
    Use reads the version it started with, whatever another client does meanwhile."""

    def __init__(self, name: str, manifest: dict, fds: dict[str, int]):
        self.name = name
        self.manifest = manifest
        self.identity = manifest[SEAL]  # a checksum of everything: equal identity, equal content
        self._fds = fds
        self._closer = weakref.finalize(self, _close_all, list(fds.values()))

    def read(self, entry: dict) -> bytes:
        """One tensor file, checked against its size and checksum before anything uses it."""
        fd = self._fds[entry["file"]]
        data = read_at(fd, entry["bytes"] + 1)  # one byte more: a file that grew is caught too
        if len(data) != entry["bytes"] or sha256_bytes(data) != entry["sha256"]:
            raise RefDropError(
                f"RefDrop: reference '{self.name}' is corrupt: {entry['file']} does not match its checksum"
            )
        return data

    def close(self) -> None:
        self._closer()

    @property
    def closed(self) -> bool:
        return not self._closer.alive


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class ReferenceStore:
    """The library of saved references under one root folder."""

    def __init__(self, root: str | os.PathLike, cache: RamCache = RAM_CACHE):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = cache  # decoded slots of references, keyed by content identity; dropped when one changes
        self.clean_leftovers()

    # -- names and folders -----------------------------------------------------------------------------

    def _folders_by_name(self) -> dict[str, list[Path]]:
        """Every entry of the root that can hold a reference, by the canonical name it stands for.

        A folder copied from macOS has an NFD name and one made by hand may end in a space: they are listed, used,
        renamed and deleted under their canonical (NFC, trimmed) name."""
        groups: dict[str, list[Path]] = {}
        for entry in self._entries():
            try:
                groups.setdefault(validate_name(entry), []).append(self.root / entry)
            except RefDropError:
                continue
        return groups

    def _entries(self, only_non_canonical: bool = False) -> list[str]:
        try:
            entries = sorted(os.listdir(self.root))
        except OSError:
            return []
        entries = [e for e in entries if not e.startswith(".")]
        if only_non_canonical:  # cheap: almost every name is canonical, and those need no validation here
            entries = [e for e in entries if e != e.strip() or not unicodedata.is_normalized("NFC", e)]
        return entries

    def path(self, name: str) -> Path:
        """The folder of reference ``name``: the existing one (whatever its on-disk spelling), else where a new one
        goes. The name is validated, so it cannot point anywhere outside the store."""
        name = validate_name(name)
        canonical = self.root / name
        folders = [canonical] if _exists(canonical) else []
        for entry in self._entries(only_non_canonical=True):
            try:
                if validate_name(entry) == name:
                    folders.append(self.root / entry)
            except RefDropError:
                continue
        if len(folders) > 1:
            spelled = ", ".join(repr(f.name) for f in folders)
            raise RefDropError(
                f"RefDrop: {len(folders)} folders in {self.root} are all the reference '{name}' ({spelled}: the same "
                "name written with different unicode forms or spaces); rename or remove all but one of them on disk"
            )
        folder = folders[0] if folders else canonical
        if folder.parent != self.root:
            raise RefDropError(f"RefDrop: invalid reference name {name!r}")
        return folder

    def names(self) -> list[str]:
        """Complete references, sorted case-insensitively, each once. Broken ones are listed too (``manifest``
        says why); folders whose name is not a valid reference name are not references and are left out."""
        found = []
        with _lock:
            for name, folders in self._folders_by_name().items():
                try:
                    if any(folder.is_dir() and (folder / MANIFEST).is_file() for folder in folders):
                        found.append(name)
                except OSError:
                    continue
        return sorted(found, key=str.lower)

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).is_file()

    def store_of(self, name: str) -> ReferenceStore:
        """The store that holds reference ``name``, where its rows are baked: this one (a Use may read a view of
        several stores that answers otherwise: ``comfyui/folders.Folders``)."""
        return self

    def missing_message(self, name: str) -> str:
        known = ", ".join(self.names()) or "none"
        return f"RefDrop: reference '{name}' not found in {self.root} (saved references: {known})"

    # -- reading ---------------------------------------------------------------------------------------

    def manifest(self, name: str) -> dict:
        """The validated manifest; also checks that every tensor file is there, a plain file, with its recorded
        size, so a truncated or missing file is reported now (by name) and not in the middle of a generation."""
        with _lock:  # not torn by a rename/delete in this process between reading the manifest and the stats
            manifest = self._read_manifest(name)
            folder = self._readable_folder(name)
            for entry in file_entries(manifest):
                self._check_size(name, folder, entry)
        return manifest

    def _readable_folder(self, name: str) -> Path:
        """The folder of reference ``name`` for reading: never through a link, which could lead anywhere."""
        folder = self.path(name)
        if folder.is_symlink():
            raise RefDropError(
                f"RefDrop: reference '{name}' cannot be used: its folder is a link to {os.readlink(folder)!r}; RefDrop "
                f"reads only folders inside {self.root} (move the reference's folder there)"
            )
        return folder

    def _check_size(self, name: str, folder: Path, entry: dict) -> None:
        try:
            size = regular_size(folder / entry["file"])  # lstat only: opening happens in ``open``
        except FileNotFoundError:
            raise self._missing_file(name, entry) from None
        except NotRegularFile as exc:
            raise _unusable(name, exc) from None
        except OSError as exc:
            raise RefDropError(f"RefDrop: reference '{name}' cannot be read: {exc}") from None
        self._check_bytes(name, entry, size)

    @staticmethod
    def _check_bytes(name: str, entry: dict, size: int) -> None:
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
        return _read_manifest_file(self._readable_folder(name) / MANIFEST, name, self.missing_message)

    def _identity_on_disk(self, name: str) -> str | None:
        try:
            return self._read_manifest(name)[SEAL]
        except RefDropError:
            return None

    def open(self, name: str) -> OpenReference:
        """The reference as one consistent version (see ``OpenReference``), checked like ``manifest``.

        If another client overwrites or renames it while it is being opened, opening starts again, so the files
        always belong to the manifest; a reference is called corrupt only when it is."""
        for _ in range(OPEN_ATTEMPTS):
            with _lock:
                manifest = self.manifest(name)
                fds = self._open_files(name, manifest)
                if fds is not None and self._identity_on_disk(name) == manifest[SEAL]:
                    return OpenReference(name, manifest, fds)
                _close_all(list((fds or {}).values()))
            time.sleep(0.05)  # a write in another process is between two of its renames
        raise RefDropError(f"RefDrop: reference '{name}' kept changing while it was opened; try again")

    def _open_files(self, name: str, manifest: dict) -> dict[str, int] | None:
        """Descriptors of every tensor file, or None when one vanished because the reference changed."""
        try:
            return _open_tensor_files(self._readable_folder(name), name, manifest)
        except _FileVanished as gone:
            if self._identity_on_disk(name) != manifest[SEAL]:
                return None
            raise self._missing_file(name, gone.entry) from None

    def verify(self, name: str) -> dict:
        """Read every tensor file of a reference and check its checksum (slow: the whole reference)."""
        opened = self.open(name)
        try:
            for entry in file_entries(opened.manifest):
                opened.read(entry)
        finally:
            opened.close()
        return opened.manifest

    def read_preview(self, name: str) -> bytes | None:
        """The preview PNG's bytes, None if the reference has none. A preview that is a link, a FIFO or larger
        than ``MAX_PREVIEW_BYTES`` is refused with a message: nothing outside the reference is ever served."""
        return self._read_picture(name, PREVIEW, "a preview")

    def read_mask(self, name: str) -> bytes | None:
        """The subject mask's PNG bytes, None if the reference has none; refused like a bad preview. Like the
        preview it is not covered by the manifest's checksums: a caller decodes it as an untrusted image."""
        return self._read_picture(name, MASK, "a mask")

    def set_mask(self, name: str, png: bytes | None) -> None:
        """Give reference ``name`` a subject mask (PNG bytes, checked by the caller), or remove it (None). The file
        is replaced in one rename, so a Use reads the old mask or the new one."""
        self._set_picture(name, MASK, png, "mask")

    def set_preview(self, name: str, png: bytes) -> None:
        """Give reference ``name`` its preview (PNG bytes), replacing the one it has (e.g. when the image is decoded
        after the Save was written); like the mask, the preview is not covered by the manifest's checksums."""
        self._set_picture(name, PREVIEW, png, "preview")

    def _set_picture(self, name: str, file: str, png: bytes | None, what: str) -> None:
        if png is not None and len(png) > MAX_PREVIEW_BYTES:
            raise RefDropError(f"RefDrop: a {what} may have at most {MAX_PREVIEW_BYTES // 2**20} MB")
        with _lock:
            folder = self._readable_folder(name)  # a link: refused
            if not folder.is_dir():
                raise ReferenceNotFound(self.missing_message(name))
            target = folder / file
            try:
                if png is None:
                    if _exists(target):
                        os.unlink(target)
                    return
                write_bytes_atomic(target, png, tmp_dir=self._private_dir(INCOMING))
            except OSError as exc:
                raise RefDropError(f"RefDrop: the {what} of reference '{name}' could not be written: {exc}") from None

    def _read_picture(self, name: str, file: str, what: str) -> bytes | None:
        path = self._readable_folder(name) / file
        try:
            return read_regular(path, MAX_PREVIEW_BYTES)
        except FileNotFoundError:
            return None
        except NotRegularFile as exc:
            raise _unusable(name, exc) from None
        except FileTooLarge as exc:
            raise RefDropError(
                f"RefDrop: reference '{name}' has {what} of {exc.size} bytes, more than the "
                f"{MAX_PREVIEW_BYTES // 2**20} MB {what} may have; it is not used"
            ) from None
        except OSError as exc:
            raise RefDropError(f"RefDrop: reference '{name}' cannot be read: {exc}") from None

    # -- private folders -------------------------------------------------------------------------------

    def _private_dir(self, kind: str, create: bool = True) -> Path | None:
        """``<root>/.incoming`` or ``.trash`` when it is a real folder. Anything else in its place (a link to
        another folder, a file) is moved aside with a message and never followed."""
        path = self.root / kind
        if is_real_dir(path):
            return path
        if _exists(path):
            what = describe(path)
            aside = self.root / f"{kind}.set-aside-{uuid.uuid4().hex[:8]}"
            os.replace(path, aside)  # renames a link itself, never its target
            print(f"RefDrop: {path} was {what}, not a folder; moved it aside to {aside.name}, untouched")
        if not create:
            return None
        path.mkdir(exist_ok=True)
        if not is_real_dir(path):
            raise OSError(errno.EEXIST, f"{path} is not a folder")
        return path

    def _trash_path(self, kind: str) -> Path:
        return self._private_dir(TRASH) / f"{kind}-{uuid.uuid4().hex}"

    @contextmanager
    def name_lock(self):
        """Held from the check that a name is free to the rename that takes it, by every process that writes this
        store: an flock on the ``.incoming`` folder itself, so no lock file is left (``_lock`` does the same between
        threads, and is taken first). ``OSError`` if another process holds it for ``NAME_LOCK_TIMEOUT_S``. Where a
        folder cannot be opened (Windows) there is none; a rename onto a reference is refused there all the same."""
        if os.name == "nt":
            yield
            return
        fd = os.open(self._private_dir(INCOMING), _DIR_FLAGS)  # a real folder: ``_private_dir`` set a link aside
        try:
            deadline = time.monotonic() + NAME_LOCK_TIMEOUT_S
            while not _flock(fd):
                if time.monotonic() > deadline:
                    raise OSError(errno.EAGAIN, f"another process has held the store's name lock for "
                                                f"{NAME_LOCK_TIMEOUT_S:.0f} s")
                time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- writing ---------------------------------------------------------------------------------------

    def begin(self, name: str, overwrite: bool) -> Staging:
        """A fresh staging folder for a new reference; fails early if the name is taken.

        A ``RefDropError`` is a user problem (name taken or invalid); an ``OSError`` means the store cannot be
        written (full, read-only)."""
        name = validate_name(name)
        if self.exists(name) and not overwrite:
            raise ReferenceExists(
                f"RefDrop: a reference named '{name}' already exists; choose another name or allow overwriting"
            )
        return self._new_staging()

    def _new_staging(self) -> Staging:
        paths = StagingPaths(self._private_dir(INCOMING), uuid.uuid4().hex)
        # The lock file appears under its final name already locked (made under a temporary name first), so a
        # cleaner in another process can never mistake a starting write for a dead one.
        fh = open(paths.tmp_lock, "x+b")
        try:
            if not _lock_file(fh):
                raise OSError(errno.EAGAIN, "could not lock the staging folder")
            os.replace(paths.tmp_lock, paths.lock)
            paths.folder.mkdir()
        except BaseException:
            fh.close()
            _remove_tree(paths.tmp_lock)
            _remove_tree(paths.lock)
            raise
        return Staging(paths, fh)

    def commit(self, staging: Staging, name: str, overwrite: bool) -> Path:
        """Make a staged reference visible under ``name`` with one rename.

        An overwritten reference is moved to ``.trash/replaced-<id>/`` first; if the process dies before the new
        one is in place, the next start puts the old one back."""
        name = validate_name(name)
        target = self.root / name
        displaced_dir = None
        with _lock, self.name_lock():
            existing = self.path(name)
            if _exists(existing):
                if not overwrite:
                    raise _appeared(name)
                old_identity = self._identity_on_disk(name)
                displaced_dir = staging.paths.displaced(self._private_dir(TRASH))
                displaced_dir.mkdir(exist_ok=True)
                os.replace(existing, displaced_dir / existing.name)
                try:
                    self._move_in(staging.folder, target, name)
                except OSError:
                    os.replace(displaced_dir / existing.name, existing)  # put the old one back
                    raise
                self.cache.forget(old_identity)
                self.drop_bake(old_identity)
            else:
                self._move_in(staging.folder, target, name)
            _fsync_dir(self.root)
        staging.release()
        if displaced_dir is not None:
            _remove_tree(displaced_dir)
        return target

    @staticmethod
    def _move_in(folder: Path, target: Path, name: str) -> None:
        """Rename a complete reference to ``target``; a writer outside RefDrop's lock that got there first is named
        like any other (the rename fails on a folder that is not empty, or a file)."""
        try:
            os.replace(folder, target)
        except OSError as exc:
            if exc.errno in _NAME_TAKEN or (exc.errno == errno.ENOTDIR and _exists(target)):
                raise _appeared(name) from None
            raise

    def discard(self, staging: Staging | None) -> None:
        if staging is None:
            return
        _remove_tree(staging.folder)
        staging.release()

    def delete(self, name: str) -> None:
        with _lock:
            folder = self.path(name)
            if not (folder.is_dir() or folder.is_symlink()):
                raise ReferenceNotFound(self.missing_message(name))
            identity = self._identity_on_disk(name)
            try:
                doomed = self._trash_path("deleted")
                os.replace(folder, doomed)  # atomic: the reference disappears from the list at once
            except OSError as exc:
                raise RefDropError(f"RefDrop: reference '{name}' could not be deleted: {exc}") from None
            self.cache.forget(identity)
            self.drop_bake(identity)
        _remove_tree(doomed)

    def rename(self, old: str, new: str) -> str:
        new = validate_name(new)
        with _lock, self.name_lock():
            source, target = self.path(old), self.path(new)
            if not source.is_dir():
                raise ReferenceNotFound(self.missing_message(old))
            if source.is_symlink():
                raise RefDropError(f"RefDrop: reference '{old}' is a link to another folder; rename it on disk")
            if _exists(target) and not os.path.samefile(target, source):
                raise ReferenceExists(f"RefDrop: a reference named '{new}' already exists")
            manifest = self.manifest(old)
            identity = manifest[SEAL]
            manifest["name"] = new
            try:
                incoming = self._private_dir(INCOMING)
                write_json_atomic(source / MANIFEST, seal_manifest(manifest), tmp_dir=incoming)
                os.replace(source, self.root / new)
            except OSError as exc:
                raise RefDropError(f"RefDrop: reference '{old}' could not be renamed: {exc}") from None
            self.cache.forget(identity)
            self.drop_bake(identity)  # its seal changed: the rows are baked again for the new one
        return new

    # -- baked rows of trajectory references ----------------------------------------------------------------

    def begin_bake(self) -> Staging:
        """A staging folder for the baked rows of a trajectory reference (``commit_bake`` makes them visible)."""
        return self._new_staging()

    def commit_bake(self, staging: Staging, seal: str, name: str) -> bool:
        """Make staged baked rows of reference ``name`` sealed ``seal`` visible with one rename. False, and the
        staging folder removed, where they are no use: the reference has another seal by now (overwritten, renamed,
        deleted) or another Use baked it first."""
        committed = False
        with _lock:
            if _OWN_BAKE.match(seal) and self._identity_on_disk(name) == seal:
                try:
                    os.replace(staging.folder, self._private_dir(BAKED) / seal)  # fails onto a bake that is there
                    committed = True
                except OSError as exc:
                    if exc.errno not in (*_NAME_TAKEN, errno.ENOTDIR):
                        raise
        if committed:
            staging.release()
        else:
            self.discard(staging)
        return committed

    def open_bake(self, seal: str, name: str) -> OpenReference | None:
        """The baked rows of reference ``name`` sealed ``seal``, opened like a reference (manifest, its checksum,
        every file there at its size; ``ReferenceReader.verify`` checks the rest), or None: there are none, or they
        cannot be read, and then they are dropped (the next Use bakes them again)."""
        baked = self._private_dir(BAKED, create=False)
        if baked is None or not _OWN_BAKE.match(seal) or not _exists(baked / seal):
            return None
        label = f"{name} (baked rows)"
        try:
            if not is_real_dir(baked / seal):
                raise RefDropError(f"RefDrop: {baked / seal} is not a folder")
            manifest = _read_manifest_file(baked / seal / MANIFEST, label, lambda _: "no manifest")
            generation = manifest.get("generation")
            if not isinstance(generation, dict) or generation.get("baked_from") != seal:
                raise RefDropError(f"RefDrop: {baked / seal} holds the rows of another reference")
            return OpenReference(label, manifest, _open_tensor_files(baked / seal, label, manifest))
        except (RefDropError, _FileVanished, OSError):
            self.drop_bake(seal)
            return None

    def drop_bake(self, seal: str | None) -> None:
        """Remove the baked rows of the reference sealed ``seal``, if any (files a Use has open stay readable)."""
        baked = self._private_dir(BAKED, create=False)
        if seal is None or baked is None or not _OWN_BAKE.match(seal) or not _exists(baked / seal):
            return
        with _lock:
            try:
                self.cache.forget(_read_manifest_file(baked / seal / MANIFEST, seal, str)[SEAL])
            except RefDropError:
                pass
            try:
                doomed = self._trash_path("deleted")
                os.replace(baked / seal, doomed)
            except OSError:
                return
        _remove_tree(doomed)

    def _clean_baked(self, baked: Path) -> None:
        """Drop baked rows whose reference is gone (removed or replaced outside RefDrop, or while this process
        was not running)."""
        for entry in baked.iterdir():
            if not _OWN_BAKE.match(entry.name):
                continue
            try:
                name = _read_manifest_file(entry / MANIFEST, entry.name, str)["name"]
                alive = isinstance(name, str) and self._identity_on_disk(name) == entry.name
            except (RefDropError, OSError):
                alive = False
            if not alive:
                self.drop_bake(entry.name)

    def clean_leftovers(self) -> None:
        """Undo what writes that never finished left behind (a crash, a kill) and finish deletions.

        Only entries this module creates are touched, and of staging folders only those whose lock is free. A lock
        cannot be taken through a second descriptor even in the process that holds it, so a Save running here or
        in another process is left alone."""
        with _lock:
            trash = self._private_dir(TRASH, create=False)
            incoming = self._private_dir(INCOMING, create=False)
            if trash is not None:
                self._clean_trash(trash, incoming or self.root / INCOMING)
            if incoming is not None:
                self._clean_incoming(incoming)
            baked = self._private_dir(BAKED, create=False)
            if baked is not None:
                self._clean_baked(baked)

    def _clean_trash(self, trash: Path, incoming: Path) -> None:
        for entry in trash.iterdir():
            own = _OWN_TRASH.match(entry.name)
            if own is None:
                continue
            kind, key = own.groups()
            if kind == "replaced":
                if _writer_alive(StagingPaths(incoming, key).lock):
                    continue
                if is_real_dir(entry):
                    self._restore_displaced(entry)
            _remove_tree(entry)

    def _clean_incoming(self, incoming: Path) -> None:
        for entry in incoming.iterdir():
            if _OWN_TEMP.match(entry.name):  # a lock file being created, a manifest or mask being replaced
                if not _writer_alive(entry):
                    _remove_tree(entry)
                continue
            own = _OWN_INCOMING.match(entry.name)
            if own is None:
                continue
            paths = StagingPaths(incoming, own.group(1))
            if _writer_alive(paths.lock):
                continue
            _remove_tree(paths.folder)
            _remove_tree(paths.lock)

    def _restore_displaced(self, displaced_dir: Path) -> None:
        """An overwriting Save died between moving the old reference away and moving the new one in."""
        for old in displaced_dir.iterdir():
            try:
                validate_name(old.name)
            except RefDropError:
                continue  # not a reference: not something this module put there
            target = self.root / old.name
            if not _exists(target):
                try:
                    os.replace(old, target)
                except OSError:
                    pass


class _FileVanished(Exception):
    def __init__(self, entry: dict):
        super().__init__(entry["file"])
        self.entry = entry


def _open_tensor_files(folder: Path, name: str, manifest: dict) -> dict[str, int]:
    """Descriptors of every tensor file of the manifest in ``folder``, each a plain file of its recorded size;
    ``_FileVanished`` names one that is not there."""
    fds: dict[str, int] = {}
    try:
        for entry in file_entries(manifest):  # each file once: ``check_manifest`` refuses a name listed twice
            try:
                fd = fds[entry["file"]] = open_regular(folder / entry["file"])
            except FileNotFoundError:
                raise _FileVanished(entry) from None
            ReferenceStore._check_bytes(name, entry, size_of(fd))
    except NotRegularFile as exc:
        _close_all(list(fds.values()))
        raise _unusable(name, exc) from None
    except BaseException:
        _close_all(list(fds.values()))
        raise
    return fds


def _no_constant(value: str):
    raise ValueError(f"{value} is not allowed in a manifest")


def _read_manifest_file(path: Path, name: str, missing_message) -> dict:
    """The validated manifest at ``path`` of reference ``name`` (``missing_message(name)``: what to say when there is
    none)."""
    try:
        raw = read_regular(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ReferenceNotFound(missing_message(name)) from None
    except FileTooLarge:
        raise broken(name, "manifest.json is implausibly large") from None
    except NotRegularFile as exc:
        raise _unusable(name, exc) from None
    except OSError as exc:
        raise RefDropError(f"RefDrop: reference '{name}' cannot be read: {exc}") from None
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RefDropError(f"RefDrop: reference '{name}' has a corrupt manifest (not valid JSON)") from None
    return check_manifest(manifest, name)


def write_json_atomic(path: Path, data: dict, tmp_dir: Path | None = None) -> None:
    """Write JSON so that ``path`` is always either the old or the new file (``write_bytes_atomic``)."""
    text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False)
    write_bytes_atomic(path, text.encode("utf-8"), tmp_dir)


def temp_name(final: str, key: str | None = None) -> str:
    """The name a file that becomes ``final`` has while it is written (``key``: 32 hex digits, fresh by default): the
    one spelling of a temporary file, which clean-up recognises (``_OWN_TEMP``) and removes once its writer is gone."""
    return f".{final}.{key or uuid.uuid4().hex}.tmp"


def write_bytes_atomic(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write ``data`` so that ``path`` is always either the old or the new file. ``tmp_dir`` (same file system) keeps
    the temporary file out of a visible folder, where a crash would leave it; the file is locked while it is
    written, so a clean-up in another process leaves it alone."""
    tmp = (tmp_dir or path.parent) / temp_name(path.name)
    try:
        with open(tmp, "xb") as fh:
            _lock_file(fh)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_tree(tmp)
        raise
