"""Writes a reference in the background while sampling goes on.

The sampling thread hands over one completed model evaluation ("slot") at a time; a writer thread waits for
its device->host copies, serialises it to safetensors, checksums it and writes it into a staging folder.
``finish`` adds the preview and the manifest and renames the folder into the store: the reference appears
complete or not at all. A failure (disk full, permissions) is kept in ``status`` and the staging folder is
removed; sampling is never interrupted by it. The rows a trajectory reference's first Use bakes are written the
same way, into the store's hidden area for them (``bake_of``: that reference's seal; ``store.commit_bake``).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch

from . import compression
from .manifest import Recording, build_manifest, sha256_bytes
from .names import validate_name
from .reader import WriteThrough
from .side_threads import start_side_thread
from .sigmas import Slot
from .store import BAKED, MANIFEST, PREVIEW, ReferenceStore, Staging, write_json_atomic

# The one registry of Saves in flight in this process: (store folder, name) -> writers still working on it (two
# clients may race); a Save in one store says nothing about the same name in another.
_active: dict[tuple[Path, str], list[ReferenceWriter]] = {}
_active_lock = threading.Lock()
QUEUE_SLOTS = 3  # slots waiting for the disk before the sampler is made to wait (bounds host RAM)


def pending_write(store: ReferenceStore, name: str) -> ReferenceWriter | None:
    """The writer still working on ``name`` in ``store``, if any (the most recent one)."""
    with _active_lock:
        writers = _active.get((store.root, name))
        return writers[-1] if writers else None


def pending_bake(store: ReferenceStore, seal: str) -> ReferenceWriter | None:
    """The writer still baking the rows of the reference sealed ``seal`` in ``store``, if any."""
    with _active_lock:
        writers = _active.get((store.root, _bake_key(seal)))
        return writers[-1] if writers else None


def _bake_key(seal: str) -> str:
    return f"{BAKED}/{seal}"  # never a reference's name (a name has no "/")


def abandon_unfinished() -> None:
    """Abort every write whose generation never said how it ended (it failed or was interrupted before
    ``finish``); such a writer would otherwise wait for its last slot forever."""
    with _active_lock:
        orphans = [w for writers in _active.values() for w in writers if not w.ended]
    for writer in orphans:
        writer.abort("the generation did not finish")


@dataclass
class SaveStatus:
    name: str
    state: str = "writing"  # writing | saved | failed
    message: str = ""
    bytes: int = 0


def failure_reason(exc: BaseException) -> str:
    """Why a save failed, in words a user can act on."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the disk is full ({exc.strerror or 'No space left on device'}); free some space and save again"
    if isinstance(exc, OSError) and exc.errno == errno.EDQUOT:
        return "the disk quota is exhausted; free some space and save again"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"the reference folder cannot be written ({exc.strerror}: {exc.filename or ''})"
    return str(exc).removeprefix("RefDrop: ")


class ReferenceWriter:
    def __init__(self, store: ReferenceStore, name: str, overwrite: bool, file_encoding: str = "raw",
                 note: str = "", bake_of: str = ""):
        self.store = store
        self.overwrite = overwrite
        self.bake_of = bake_of  # the seal of the trajectory reference ``name`` whose rows this bakes ("": a Save)
        self.file_encoding = file_encoding  # how each slot file is written (Profile.file_encoding)
        self.note = note  # said after "saved reference ..." (how the Save differs from what its profile asks)
        self.status = SaveStatus(name=validate_name(name))
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SLOTS)
        self._slot_files: dict[int, list[dict]] = {}
        self._done = threading.Event()
        self.ended = False  # finish or abort was called: nothing more comes from the generation
        self._write_through = WriteThrough(store.cache)  # the slots, for the RAM cache once saved
        self.staging: Staging | None = None
        try:
            # RefDropError (name taken) goes to the caller
            self.staging = store.begin_bake() if bake_of else store.begin(self.name, overwrite)
        except OSError as exc:  # the store cannot be written: the generation goes on, the status says why
            self._fail(exc)
            self._done.set()
            return
        with _active_lock:
            _active.setdefault(self._key, []).append(self)
        self._thread = start_side_thread(self._run, f"refdrop-writer-{name}")

    @property
    def name(self) -> str:
        return self.status.name

    @property
    def _key(self) -> tuple[Path, str]:
        return self.store.root, _bake_key(self.bake_of) if self.bake_of else self.name

    # -- called from the sampling thread ------------------------------------------------------------------

    def put_slot(self, slot: Slot, part: int, tensors: dict, ready, release=None) -> None:
        """Queue one slot's tensors; ``ready()`` waits for their copies, ``release()`` frees their buffers."""
        if self.status.state == "failed":
            if release:
                release()
            return
        self._queue.put(("slot", (slot, part, tensors, ready, release)))
        if self.status.state == "failed":  # failed while we waited: nobody else will free these buffers
            self._drain()

    def finish(self, family: str, generation: dict, recording: Recording, preview=None) -> None:
        """Queue the end of the reference; ``preview`` is PNG bytes or a PIL image (encoded off this thread)."""
        self.ended = True
        if not self._done.is_set():
            self._queue.put(("finish", (family, generation, recording, preview)))

    def abort(self, reason: str) -> None:
        self.ended = True
        if not self._done.is_set():
            self._queue.put(("abort", reason))

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # -- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                kind, payload = self._queue.get()
                if kind == "slot":
                    self._write_slot(*self._write_through.keeping(*payload))
                elif kind == "finish":
                    self._finish(*payload)
                    return
                else:
                    raise OSError(f"save cancelled: {payload}")
        except Exception as exc:  # noqa: BLE001 - any failure must end as a clear status, never a half reference
            self._fail(exc)
            self.store.discard(self.staging)
            self._drain()
        finally:
            with _active_lock:
                writers = _active.get(self._key, [])
                if self in writers:
                    writers.remove(self)
                if not writers:
                    _active.pop(self._key, None)
            self._done.set()

    def _fail(self, exc: BaseException) -> None:
        what = f"the rows of reference '{self.name}' were not baked" if self.bake_of else \
            f"reference '{self.name}' was not saved"
        self.status.message = f"RefDrop: {what}: {failure_reason(exc)}"
        self.status.state = "failed"

    def _drain(self) -> None:
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == "slot" and payload[4]:
                payload[4]()

    def _write_slot(self, slot: Slot, part: int, tensors: dict, ready, release) -> None:
        try:
            ready()
            data = safetensors.torch.save(tensors)  # sigma and occurrence are in the manifest
        finally:
            if release:
                release()
        file = f"slot_{slot.index:04d}_{part}.safetensors"
        entry = {}
        if self.file_encoding == compression.ZSTD:
            entry = {"encoding": compression.ZSTD, "raw_bytes": len(data)}
            data, file = compression.compress(data), file + compression.SUFFIX
        _write_file(self.staging.folder / file, data)
        self._slot_files.setdefault(slot.index, []).append(
            {"file": file, "bytes": len(data), "sha256": sha256_bytes(data), **entry}
        )
        self.status.bytes += len(data)

    def _finish(self, family: str, generation: dict, recording: Recording, preview) -> None:
        if not self._slot_files:
            raise OSError("nothing was recorded (did the generation run any self-attention layer?)")
        if preview is not None:
            png = png_bytes(preview)
            _write_file(self.staging.folder / PREVIEW, png)
            self.status.bytes += len(png)
        manifest = build_manifest(self.name, family, generation, recording, self._slot_files, self.status.bytes)
        write_json_atomic(self.staging.folder / MANIFEST, manifest)
        self.status.state = "saved"
        if self.bake_of:
            if not self.store.commit_bake(self.staging, self.bake_of, self.name):
                self.status.message = f"RefDrop: the rows of reference '{self.name}' were not baked: it changed"
                return
            self.status.message = (f"RefDrop: baked the rows of reference '{self.name}' "
                                   f"({format_bytes(self.status.bytes)})")
            opened = lambda: self.store.open_bake(self.bake_of, self.name)  # noqa: E731
        else:
            self.store.commit(self.staging, self.name, self.overwrite)
            self.status.message = f"RefDrop: saved reference '{self.name}' ({format_bytes(self.status.bytes)})" + (
                f"; {self.note}" if self.note else "")
            opened = lambda: self.store.open(self.name)  # noqa: E731
        self._write_through.hand_over(opened, manifest)  # before ``wait`` returns: a Use reads no file


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def png_bytes(preview) -> bytes:
    if isinstance(preview, bytes):
        return preview
    import io

    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    return buffer.getvalue()


def format_bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"
