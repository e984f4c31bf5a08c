"""The reference library as a host's HTTP API answers it: list, details, preview, rename, delete, export, import.

Host-neutral: the WebUIs' FastAPI routes (``webui/api.py``) and ComfyUI's aiohttp routes (``comfyui/routes.py``)
both call these and send what they return, so both answer ``/refdrop/v1`` with the same JSON and the same checks: a
name is validated before it touches the disk (no traversal), the store is untrusted (a planted link, FIFO or huge
file is refused with a message), a reference being written is neither renamed nor deleted. ``failure`` maps an
exception to ``(status, kind, message)``; the body is then ``{"error": kind, "detail": message}``, never a traceback.
"""

from __future__ import annotations

import base64
import tempfile
from contextlib import contextmanager
from urllib.parse import quote

from .errors import RefDropError, ReferenceExists, ReferenceNotFound
from .reference import bundle
from .reference.manifest import SUMMARY_FIELDS, ReferenceInfo, reference_info
from .reference.names import validate_name
from .reference.store import ReferenceStore
from .reference.writer import pending_write


class NotFound(ReferenceNotFound):  # also "this reference has no preview"
    pass


class Conflict(ReferenceExists):  # also "a Save is writing this name right now"
    pass


class Unusable(RefDropError):
    pass


def summary(info: ReferenceInfo) -> dict:
    """The list view of one reference: what it was generated with, how big it is, when (None where unknown)."""
    return {field: getattr(info, field) for field in SUMMARY_FIELDS}


def list_references(store: ReferenceStore, names: list[str] | None = None) -> dict:
    """``{"references": [...]}``; ``names``: the references to list (default: the store's, after importing the
    reference files dropped into its folder: ``bundle.adopt_received``)."""
    if names is None:
        bundle.adopt_received(store)
    return {"references": [list_entry(store, name) for name in (store.names() if names is None else names)]}


def list_entry(store: ReferenceStore, name: str) -> dict:
    entry = {"name": name, "writing": pending_write(store, name) is not None}
    try:
        entry.update(summary(reference_info(store.manifest(name))))
    except (RefDropError, OSError) as exc:  # one broken reference must not take the list down
        entry["error"] = message(exc)
    return entry


def existing(store: ReferenceStore, name: str) -> str:
    """The canonical name of an existing reference; 400 for an invalid name, 404 for an unknown one."""
    name = validate_name(name)
    with on_disk():
        store.path(name)  # the store's own containment check
        if not store.exists(name):
            raise NotFound(store.missing_message(name))
    return name


@contextmanager
def on_disk():
    """A store refusal (unreadable manifest, a preview that is a link, two folders for one name...) becomes a 409:
    the request is well-formed, the reference on disk is not, so fixing or deleting it helps and retrying does not."""
    try:
        yield
    except (ReferenceNotFound, ReferenceExists):
        raise
    except RefDropError as exc:
        raise Unusable(str(exc)) from None


def not_being_written(store: ReferenceStore, name: str, action: str) -> None:
    if pending_write(store, name) is not None:
        raise Conflict(f"RefDrop: reference '{name}' is being written; {action} it when the save has finished")


def details(store: ReferenceStore, name: str) -> dict:
    name = existing(store, name)
    with on_disk():
        manifest = store.manifest(name)
    try:
        picture, preview_error = store.read_preview(name), None
    except RefDropError as exc:  # a planted or broken preview must not hide the rest of the reference
        picture, preview_error = None, message(exc)
    return {
        "name": name,
        "writing": pending_write(store, name) is not None,
        "summary": summary(reference_info(manifest)),
        "manifest": manifest,
        "preview": base64.b64encode(picture).decode("ascii") if picture is not None else None,
        "preview_error": preview_error,
    }


def preview(store: ReferenceStore, name: str) -> bytes:
    """The preview PNG, 404 without one, 409 with the store's message for one it refuses (a link, a FIFO, too big)."""
    name = existing(store, name)
    with on_disk():
        picture = store.read_preview(name)
    if picture is None:
        raise NotFound(f"RefDrop: reference '{name}' has no preview image")
    return picture


def delete(store: ReferenceStore, name: str) -> dict:
    name = existing(store, name)
    not_being_written(store, name, "delete")
    with on_disk():
        store.delete(name)
    return {"deleted": name}


def rename(store: ReferenceStore, name: str, payload) -> dict:
    name = existing(store, name)
    new_name = payload.get("new_name") if isinstance(payload, dict) else None
    if not isinstance(new_name, str):
        raise RefDropError('RefDrop: send the new name as JSON: {"new_name": "..."}')
    unknown = sorted(set(payload) - {"new_name"})
    if unknown:
        raise RefDropError(f"RefDrop: unknown field(s) {', '.join(unknown)}; only new_name is accepted")
    new_name = validate_name(new_name)
    not_being_written(store, name, "rename")
    not_being_written(store, new_name, "rename onto")
    with on_disk():  # the store says when new_name is taken (ReferenceExists: 409)
        return {"old_name": name, "name": store.rename(name, new_name)}


def export(store: ReferenceStore, name: str) -> tuple[str, object, int]:
    """``(file name, an open temporary file holding it, its size)``: reference ``name`` as one file
    (``reference/bundle.py``), complete and checked before a byte of it is sent, so a corrupt reference is answered
    409 instead of a truncated download. The caller closes the file (it has no name on disk: nothing is left)."""
    name = existing(store, name)
    out = tempfile.TemporaryFile(dir=store.root)  # beside the store: room for what the store holds
    try:
        with on_disk():
            size = bundle.write_reference_file(store, name, out)
        out.flush()
    except BaseException:
        out.close()
        raise
    return bundle.file_name(name), out, size


def content_disposition(file: str) -> str:
    """The ``Content-Disposition`` of a download of ``file``: its name as ASCII (what curl -J reads) and exactly, in
    UTF-8 (RFC 6266, what browsers read)."""
    ascii_name = file.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_").replace("\\", "_")
    return f'attachment; filename="{ascii_name}"; filename*=UTF-8\'\'{quote(file, safe="")}'


def import_file(store: ReferenceStore, received, name: str | None = None, overwrite: bool = False) -> dict:
    """Import a received reference file (``received``: an open binary file) as ``name`` (default: the name it
    carries); ``{"name": ..., "summary": ...}``. 400 for an invalid name, 409 ``conflict`` when the name is taken
    (without ``overwrite``) or a Save is writing it, 409 ``unusable`` with the reason when the file is refused."""
    if name is not None:
        name = validate_name(name)
        not_being_written(store, name, "import over")
    try:
        imported = bundle.import_reference(store, received, name, overwrite, label="the received file")
    except ReferenceExists:
        raise
    except RefDropError as exc:
        raise Unusable(str(exc)) from None
    return {"name": imported, "summary": summary(reference_info(store.manifest(imported)))}


def failure(exc: BaseException) -> tuple[int, str, str]:
    """``(status, kind, message)`` of a failed call, as every RefDrop route answers it."""
    if isinstance(exc, ReferenceNotFound):
        return 404, "not_found", message(exc)
    if isinstance(exc, ReferenceExists):
        return 409, "conflict", message(exc)
    if isinstance(exc, Unusable):
        return 409, "unusable", message(exc)
    if isinstance(exc, RefDropError):
        return 400, "RefDropError", message(exc)
    if isinstance(exc, OSError):
        return 500, "OSError", f"RefDrop: the reference library could not be read or changed: {message(exc)}"
    return 500, type(exc).__name__, f"RefDrop: unexpected error: {exc}"


def message(exc) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)
