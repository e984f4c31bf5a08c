"""REST endpoints for the reference library, mounted on the host's FastAPI app under ``/refdrop/v1``.

    GET    /refdrop/v1/references                   list with a summary of each reference
    GET    /refdrop/v1/references/{name}            full manifest + preview (base64 PNG or null)
    GET    /refdrop/v1/references/{name}/preview    the preview as image/png
    DELETE /refdrop/v1/references/{name}
    POST   /refdrop/v1/references/{name}/rename     {"new_name": "..."}

Every failure is a JSON body ``{"error": <kind>, "detail": <message>}`` with a 4xx/5xx status, never a traceback.
The routes use ``{name:path}`` so that a name with a ``/`` (also sent as ``%2F``) reaches the name check and is
refused with 400, instead of being routed somewhere else. Generation itself goes through the host's own
``/sdapi/v1/txt2img`` (see docs/api.md).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable

from fastapi import Body, Depends, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from .errors import RefDropError
from .names import validate_name
from .store import ReferenceStore
from .writer import pending_write

API_PREFIX = "/refdrop/v1"
SUMMARY_FIELDS = ("family", "width", "height", "steps", "sampler", "seed", "prompt", "bytes", "created", "profile")
_GENERATION_FIELDS = {  # summary field -> keys tried in the manifest's "generation" dict
    "width": ("width",),
    "height": ("height",),
    "steps": ("steps",),
    "sampler": ("sampler", "sampler_name"),
    "seed": ("seed",),
    "prompt": ("prompt",),
}


class _NotFound(RefDropError):
    pass


class _Conflict(RefDropError):
    pass


# -- host integration ------------------------------------------------------------------------------------------


def credentials_from_cmd_opts(cmd_opts) -> dict[str, str] | None:
    """The users of ``--api-auth "user:pass,user2:pass2"`` as a dict, or None when API auth is off.

    Parsed like the hosts' ``Api.__init__`` does, except that a password may itself contain ``:``.
    """
    raw = getattr(cmd_opts, "api_auth", None)
    if not raw:
        return None
    users = {}
    for pair in str(raw).split(","):
        user, sep, password = pair.partition(":")
        if sep:
            users[user] = password
    return users or None


def api_enabled(cmd_opts) -> bool:
    """Whether the host serves its HTTP API (``--api`` or ``--nowebui``); without it, the routes stay unmounted."""
    return bool(getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False))


def register_routes(app: FastAPI, get_store: Callable[[], ReferenceStore],
                    credentials: dict[str, str] | None = None) -> None:
    """Mount the routes on ``app``; ``get_store()`` is called per request so a changed store folder applies at once.

    With ``credentials`` (user -> password), every route requires HTTP Basic auth, like the host's ``/sdapi``
    routes under ``--api-auth``. Calling this again replaces the routes mounted before (script reload).
    """
    app.router.routes[:] = [r for r in app.router.routes if not getattr(r, "path", "").startswith(API_PREFIX + "/")]
    dependencies = [Depends(_basic_auth(credentials))] if credentials else []
    base = f"{API_PREFIX}/references"

    def list_references():
        return _guarded(lambda: _list(get_store()))

    def reference_preview(name: str):
        return _guarded(lambda: _preview_response(get_store(), name))

    def rename_reference(name: str, payload: dict = Body(...)):  # noqa: B008 - FastAPI's way to declare a body
        return _guarded(lambda: _rename(get_store(), name, payload))

    def get_reference(name: str):
        return _guarded(lambda: _details(get_store(), name))

    def delete_reference(name: str):
        return _guarded(lambda: _delete(get_store(), name))

    # Order matters: ".../{name}/preview" must be tried before ".../{name}", which would also match it.
    app.add_api_route(base, list_references, methods=["GET"], dependencies=dependencies)
    app.add_api_route(base + "/{name:path}/preview", reference_preview, methods=["GET"], dependencies=dependencies)
    app.add_api_route(base + "/{name:path}/rename", rename_reference, methods=["POST"], dependencies=dependencies)
    app.add_api_route(base + "/{name:path}", get_reference, methods=["GET"], dependencies=dependencies)
    app.add_api_route(base + "/{name:path}", delete_reference, methods=["DELETE"], dependencies=dependencies)


def _basic_auth(credentials: dict[str, str]):
    security = HTTPBasic()  # answers 401 with WWW-Authenticate itself when no credentials are sent

    def check(given: HTTPBasicCredentials = Depends(security)) -> None:  # noqa: B008
        expected = credentials.get(given.username)
        # bytes, not str: compare_digest refuses non-ASCII str (which would be a 500 instead of a 401)
        if expected is not None and secrets.compare_digest(given.password.encode(), expected.encode()):
            return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return check


# -- the calls ---------------------------------------------------------------------------------------------------


def summary(manifest: dict) -> dict:
    """The list view of one reference: what it was generated with, how big it is, when."""
    generation = manifest.get("generation")
    generation = generation if isinstance(generation, dict) else {}
    out = {}
    for field in SUMMARY_FIELDS:
        keys = _GENERATION_FIELDS.get(field)
        if keys is None:
            out[field] = manifest.get(field)
        else:
            out[field] = next((generation[k] for k in keys if k in generation), None)
    return out


def _list(store: ReferenceStore) -> dict:
    return {"references": [_list_entry(store, name) for name in store.names()]}


def _list_entry(store: ReferenceStore, name: str) -> dict:
    entry = {"name": name, "writing": pending_write(name) is not None}
    try:
        entry.update(summary(store.manifest(name)))
    except (RefDropError, OSError) as exc:  # one broken reference must not take the list down
        entry["error"] = _message(exc)
    return entry


def _existing(store: ReferenceStore, name: str) -> str:
    """The canonical name of an existing reference; 400 for an invalid name, 404 for an unknown one."""
    name = validate_name(name)
    store.path(name)  # the store's own containment check
    if not store.exists(name):
        raise _NotFound(store.missing_message(name))
    return name


def _not_being_written(name: str, action: str) -> None:
    if pending_write(name) is not None:
        raise _Conflict(f"RefDrop: reference '{name}' is being written; {action} it when the save has finished")


def _details(store: ReferenceStore, name: str) -> dict:
    name = _existing(store, name)
    manifest = store.manifest(name)
    preview = store.preview_path(name)
    return {
        "name": name,
        "writing": pending_write(name) is not None,
        "summary": summary(manifest),
        "manifest": manifest,
        "preview": base64.b64encode(preview.read_bytes()).decode("ascii") if preview else None,
    }


def _preview_response(store: ReferenceStore, name: str) -> Response:
    name = _existing(store, name)
    preview = store.preview_path(name)
    if preview is None:
        raise _NotFound(f"RefDrop: reference '{name}' has no preview image")
    return Response(content=preview.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-store"})


def _delete(store: ReferenceStore, name: str) -> dict:
    name = _existing(store, name)
    _not_being_written(name, "delete")
    store.delete(name)
    return {"deleted": name}


def _rename(store: ReferenceStore, name: str, payload) -> dict:
    name = _existing(store, name)
    new_name = payload.get("new_name") if isinstance(payload, dict) else None
    if not isinstance(new_name, str):
        raise RefDropError('RefDrop: send the new name as JSON: {"new_name": "..."}')
    unknown = sorted(set(payload) - {"new_name"})
    if unknown:
        raise RefDropError(f"RefDrop: unknown field(s) {', '.join(unknown)}; only new_name is accepted")
    new_name = validate_name(new_name)
    _not_being_written(name, "rename")
    _not_being_written(new_name, "rename onto")
    if new_name != name and store.exists(new_name):
        raise _Conflict(f"RefDrop: a reference named '{new_name}' already exists")
    return {"old_name": name, "name": store.rename(name, new_name)}


# -- errors ------------------------------------------------------------------------------------------------------


def _guarded(call: Callable):
    """Run one call and turn every failure into a JSON answer (the host's handlers differ between Forge/reForge)."""
    try:
        return call()
    except _NotFound as exc:
        return _error(404, "not_found", exc)
    except _Conflict as exc:
        return _error(409, "conflict", exc)
    except RefDropError as exc:
        return _error(400, "RefDropError", exc)
    except OSError as exc:
        return _error(500, "OSError", f"RefDrop: the reference library could not be read or changed: {_message(exc)}")
    except Exception as exc:  # noqa: BLE001 - an API client gets a message, the console keeps the server running
        return _error(500, type(exc).__name__, f"RefDrop: unexpected error: {exc}")


def _error(status: int, kind: str, exc) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": kind, "detail": _message(exc)})


def _message(exc) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)
