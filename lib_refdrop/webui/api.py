"""REST endpoints for the reference library, mounted on the host's FastAPI app under ``/refdrop/v1``.

    GET    /refdrop/v1/references                   list with a summary of each reference
    POST   /refdrop/v1/references?name=&overwrite=  import a reference file (the body: <name>.refdrop.safetensors)
    GET    /refdrop/v1/references/{name}            full manifest + preview (base64 PNG or null)
    GET    /refdrop/v1/references/{name}/preview    the preview as image/png
    GET    /refdrop/v1/references/{name}/export     the reference as one file, <name>.refdrop.safetensors
    DELETE /refdrop/v1/references/{name}
    POST   /refdrop/v1/references/{name}/rename     {"new_name": "..."}

Every failure is a JSON body ``{"error": <kind>, "detail": <message>}`` with a 4xx/5xx status, never a traceback.
The OpenAPI document declares every answer with its body (the models below) and the name's constraints
(``name_schema``), and tests/test_api_schema.py holds the app to it with schemathesis.
The routes take the name as any text (``{name:refdrop_any}``, which also matches ``/`` and newlines) so that a name
with a ``/`` (also sent as ``%2F``) reaches the name check and is refused with 400, instead of being routed somewhere
else. Generation itself goes through the host's own ``/sdapi/v1/txt2img`` (see docs/api.md).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import tempfile
import typing
import unicodedata
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import VERSION as PYDANTIC_VERSION
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from .. import library
from ..errors import RefDropError
from ..reference import bundle
from ..reference.manifest import SUMMARY, ReferenceInfo
from ..reference.names import MAX_NAME_BYTES, MAX_NAME_LENGTH
from ..reference.store import ReferenceStore

API_PREFIX = "/refdrop/v1"


# -- what the OpenAPI document declares ------------------------------------------------------------------------


# Windows device names (names._RESERVED) spelled in any case: ECMA-262 patterns have no ignore-case flag.
_DEVICE_DIGITS = r"[0-9\u00b2\u00b3\u00b9]"  # ² ³ ¹ too
_DEVICE_NAMES = rf"[cC][oO][nN]|[pP][rR][nN]|[aA][uU][xX]|[nN][uU][lL]|(?:[cC][oO][mM]|[lL][pP][tT]){_DEVICE_DIGITS}"
# Characters as negated classes of the ASCII ones refused, so every non-ASCII character passes: a negated class
# reads the same in ECMA-262 with and without the u flag (Swagger UI, which the hosts serve at /docs, tests a
# pattern with a plain `new RegExp`), in Python's re and in Rust's regex, where \p{..} (the only way to tell a
# letter from a symbol) is missing from some. Exact for ASCII; tests/test_api_schema.py checks it against
# validate_name.
_FIRST = r"[^\x00-\x2F:-@\[-\^`{-\x7F]"         # a letter, digit or _
_MIDDLE = r"[^\x00-\x1F!-'*,/:-@\[-\^`{-\x7F]"  # also a space and . ( ) + -
_LAST = r"[^\x00-\x27*,./:-@\[-\^`{-\x7F]"      # not a dot or a space
NAME_PATTERN = (
    rf"^(?!(?:{_DEVICE_NAMES}) *(?:\.|$))"  # not a Windows device name before the first dot
    r"(?![\s\S]*\.\.)"                       # no ".."
    rf"{_FIRST}(?:{_MIDDLE}*{_LAST})?$"
)
NAME_DESCRIPTION = (
    f"A reference name, as the list shows it: at most {MAX_NAME_LENGTH} characters; letters, digits, combining "
    "marks, spaces and _ . ( ) + -; starting with a letter, digit or _; not ending with a dot or a space; no '..', "
    "'/', '\\' or NUL; not a Windows device name (con, nul, com1...). What the schema cannot say: the pattern is "
    "exact for ASCII but lets every other character through, while the server takes of those only letters, digits "
    f"and marks (Unicode categories L, N, M, Unicode {unicodedata.unidata_version}; no symbols, spaces other than "
    f"' ', invisible or control characters); the name is also at most {MAX_NAME_BYTES} bytes in UTF-8; and the "
    "server trims surrounding white space and applies Unicode NFC before checking, so other spellings of the same "
    "name are accepted and the limits apply to the canonical form. A refused name is answered 400 with the reason."
)


def name_schema() -> dict:
    """The JSON Schema of a reference name (documentation only: validate_name answers a bad name with 400)."""
    return {"maxLength": MAX_NAME_LENGTH, "minLength": 1, "pattern": NAME_PATTERN, "examples": ["cat"]}


class ApiError(BaseModel):
    """The body of every failure this API answers itself."""

    error: str = Field(description="RefDropError (400), not_found (404), conflict or unusable (409), "
                                   "method_not_allowed (405), OSError or an internal error's type (500)")
    detail: str = Field(description="what went wrong, starting with 'RefDrop: '")


class AuthError(BaseModel):
    """The host's answer when ``--api-auth`` is on and the credentials are missing or wrong (reForge adds fields of
    its own, which the schema allows: it does not forbid additional properties)."""

    detail: str


def _or_null(default=None, **field):
    """A field that may be null. Pydantic 1 (reForge's) writes OpenAPI 3.0, where only "nullable" lets null in."""
    return Field(default, **field, **({"nullable": True} if PYDANTIC_VERSION.startswith("1.") else {}))


def _summary_model() -> type[BaseModel]:
    """``Summary`` from ``ReferenceInfo``'s summary fields: each field is declared once, there."""
    hints = typing.get_type_hints(ReferenceInfo)
    shown = [f for f in dataclasses.fields(ReferenceInfo) if SUMMARY in f.metadata]
    namespace = {
        "__module__": __name__,
        "__doc__": "What a reference was generated with; null where it does not record a value of that type.",
        "__annotations__": {f.name: hints[f.name] | None for f in shown},
        **{f.name: _or_null(**({"description": f.metadata[SUMMARY]} if f.metadata[SUMMARY] else {})) for f in shown},
    }
    return type("Summary", (BaseModel,), namespace)


Summary = _summary_model()


class ListEntry(Summary):
    """One reference in the list; one that cannot be read has ``error`` and no summary fields."""

    name: str
    writing: bool = Field(description="a Save is overwriting it right now (the entry describes the old one)")
    error: str | None = _or_null(description="why the reference cannot be read (only present then)")


class ReferenceList(BaseModel):
    references: list[ListEntry] = Field(description="sorted by name, case-insensitively")


class ReferenceDetails(BaseModel):
    name: str
    writing: bool
    summary: Summary
    manifest: dict[str, Any] = Field(description="the full manifest.json")
    preview: str | None = _or_null(..., description="the preview PNG, base64; null without one or when refused")
    preview_error: str | None = _or_null(..., description="why the preview is not shown (a link, a FIFO, too big)")


class Deleted(BaseModel):
    deleted: str


class Renamed(BaseModel):
    old_name: str
    name: str


class Imported(BaseModel):
    name: str = Field(description="the name the reference is stored under")
    summary: Summary


def _answer(model: type[BaseModel], description: str) -> dict:
    return {"model": model, "description": description}


_SERVER_ERROR = {500: _answer(ApiError, "The library folder cannot be read or changed, or an internal error")}
_BAD_REQUEST = {400: _answer(ApiError, "An invalid name (or rename body); the message says why")}
_NOT_FOUND = {404: _answer(ApiError, "No reference of that name")}
_CONFLICT = {409: _answer(ApiError, "error 'conflict': a Save is writing the reference, or the new name is taken; "
                                    "error 'unusable': the reference on disk cannot be used as it is (unreadable "
                                    "manifest, a preview that is a link or a special file...), the message says why")}
_UNAUTHORIZED = {401: _answer(AuthError, "--api-auth is on and the credentials are missing or wrong")}
_PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
_FILE = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
         "headers": {"Content-Disposition": {"description": "attachment; filename=\"<name>.refdrop.safetensors\"",
                                             "schema": {"type": "string"}}}}
_IMPORT_CONFLICT = {409: _answer(ApiError, "error 'conflict': the name is taken (send overwrite=true to replace "
                                           "it) or a Save is writing it; error 'unusable': the file is refused "
                                           "(the message names what is wrong in it)")}
# Declared by hand, not as FastAPI parameters: FastAPI would then answer a malformed body itself (422, or a bare 400
# {"detail"}) and declare a 422 that the routes never send; here every failure has RefDrop's body and status.
_NAME_PARAMETER = {"name": "name", "in": "path", "required": True, "description": NAME_DESCRIPTION,
                   "schema": {"type": "string", "title": "Name", **name_schema()}}
_IMPORT_PARAMETERS = [
    {"name": "name", "in": "query", "required": False, "description": "the name to store the reference under "
     "(default: the name in the file). " + NAME_DESCRIPTION, "schema": {"type": "string", **name_schema()}},
    {"name": "overwrite", "in": "query", "required": False, "description": "replace a reference of that name",
     "schema": {"type": "boolean", "default": False}},
]
_IMPORT_BODY = {"required": True, "description": "a <name>.refdrop.safetensors file, as exported",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
_RENAME_BODY = {"required": True, "content": {"application/json": {"schema": {
    "title": "Rename", "type": "object", "properties": {"new_name": {"type": "string", **name_schema()}},
    "required": ["new_name"], "additionalProperties": False}}}}


class _AnyText(Convertor):
    """A path parameter that takes any text: Starlette's ``path`` (``.*``) stops at a newline, and a name with one
    would then match no route and get the host's bare 404 instead of RefDrop's 400."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("refdrop_any", _AnyText())  # a new name: the host's own routes are not affected


class _WrongMethod(RefDropError):
    def __init__(self, method: str, path_name: str):
        super().__init__(f"RefDrop: {method} is not supported on this path")
        self.method, self.path_name = method, path_name


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
    auth = _UNAUTHORIZED if credentials else {}
    base = f"{API_PREFIX}/references"

    def list_references():
        return _guarded(lambda: _list(get_store()))

    def reference_preview(request: Request):
        return _guarded(lambda: _preview_response(get_store(), request.path_params["name"]))

    async def rename_reference(request: Request):
        body = await request.body()  # the store's work then runs off the event loop, like the sync routes
        name = request.path_params["name"]
        return await run_in_threadpool(_guarded, lambda: _rename(get_store(), name, _json(body)))

    def export_reference(request: Request):
        return _guarded(lambda: _export_response(get_store(), request.path_params["name"]))

    async def import_reference(request: Request):
        try:  # the query first: a bad one is answered before the body is read
            store, name = get_store(), request.query_params.get("name")
            overwrite = _flag(request.query_params.get("overwrite"), "overwrite")
            received = tempfile.TemporaryFile(dir=store.root)  # nameless, beside the store: room for a reference
        except Exception as exc:  # noqa: BLE001 - answered like every failure
            return _error(*library.failure(exc))
        try:
            async for chunk in request.stream():  # to disk as it arrives: a reference may be large
                await run_in_threadpool(received.write, chunk)
            return await run_in_threadpool(_guarded, lambda: library.import_file(store, received, name, overwrite))
        finally:
            received.close()

    def get_reference(request: Request):
        return _guarded(lambda: _details(get_store(), _reference_name(request)))

    def delete_reference(request: Request):
        return _guarded(lambda: _delete(get_store(), _reference_name(request)))

    def unsupported_method(request: Request):
        return _method_not_allowed(request.method, request.path_params["name"])

    def unsupported_list_method(request: Request):
        return _not_allowed(request.method, _LIST_METHODS)

    def route(path: str, call: Callable, method: str, ok: dict, errors: dict, **options) -> None:
        app.add_api_route(path, call, methods=[method], dependencies=dependencies, response_model=None,
                          responses={200: ok, **errors, **auth, **_SERVER_ERROR}, tags=["RefDrop"], **options)

    def on_a_reference(path: str, call: Callable, method: str, ok: dict, errors: dict, **options) -> None:
        extra = {"parameters": [_NAME_PARAMETER], **options.pop("openapi_extra", {})}
        route(path, call, method, ok, {**_BAD_REQUEST, **_NOT_FOUND, **_CONFLICT, **errors}, openapi_extra=extra,
              **options)

    one = base + "/{name:refdrop_any}"
    # Order matters: ".../{name}/preview" must be tried before ".../{name}", which would also match it.
    route(base, list_references, "GET", _answer(ReferenceList, "Every reference"), {})
    route(base, import_reference, "POST", _answer(Imported, "Imported"),
          {**_BAD_REQUEST, **_IMPORT_CONFLICT},
          openapi_extra={"parameters": _IMPORT_PARAMETERS, "requestBody": _IMPORT_BODY})
    on_a_reference(one + "/preview", reference_preview, "GET", {"description": "The preview PNG", **_PNG},
                   {404: _answer(ApiError, "No reference of that name, or it has no preview")},
                   response_class=Response)
    on_a_reference(one + "/export", export_reference, "GET", {"description": "The reference file", **_FILE}, {},
                   response_class=Response)
    on_a_reference(one + "/rename", rename_reference, "POST", _answer(Renamed, "Renamed"), {},
                   openapi_extra={"requestBody": _RENAME_BODY})
    on_a_reference(one, get_reference, "GET", _answer(ReferenceDetails, "The reference"), {})
    on_a_reference(one, delete_reference, "DELETE", _answer(Deleted, "Deleted"), {})
    # Any other method on a reference's paths is a 405 naming the right ones (Starlette's own 405 would list only
    # the methods of the first route whose path matches, e.g. GET without DELETE).
    app.add_api_route(one, unsupported_method, methods=_OTHER_METHODS, dependencies=dependencies,
                      include_in_schema=False)
    app.add_api_route(base, unsupported_list_method, methods=_OTHER_LIST_METHODS, dependencies=dependencies,
                      include_in_schema=False)


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


_SUB_RESOURCES = {"/preview": "GET", "/rename": "POST", "/export": "GET"}  # path suffix -> the one method it has
_OTHER_METHODS = ["POST", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE"]  # what no ".../{name}" route answers
_LIST_METHODS = "GET, POST"  # the list and an import
_OTHER_LIST_METHODS = ["PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"]


def _reference_name(request: Request) -> str:
    """The name of ".../{name}"; GET .../cat/rename or DELETE .../cat/preview, which it also catches, are answered
    405 (the path exists, the method does not), not 400 for the name 'cat/rename'."""
    name = request.path_params["name"]
    if _sub_resource(name):
        raise _WrongMethod(request.method, name)
    return name


def _json(body: bytes):
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
        raise RefDropError('RefDrop: send the new name as JSON: {"new_name": "..."}') from None


def _flag(value: str | None, field: str) -> bool:
    """A boolean query parameter: true or false (absent: false)."""
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise RefDropError(f"RefDrop: {field} must be true or false, got {value!r}")


def _sub_resource(path_name: str) -> str | None:
    """The suffix when ``{name:refdrop_any}`` caught ".../<name>/preview" or ".../<name>/rename" (a name has no '/')."""
    return next((suffix for suffix in _SUB_RESOURCES if path_name.endswith(suffix)), None)


def _method_not_allowed(method: str, path_name: str) -> JSONResponse:
    suffix = _sub_resource(path_name)
    return _not_allowed(method, _SUB_RESOURCES[suffix] if suffix else "GET, DELETE")


def _not_allowed(method: str, allowed: str) -> JSONResponse:
    answer = _error(405, "method_not_allowed", f"RefDrop: {method} is not supported here; use {allowed}")
    answer.headers["Allow"] = allowed
    return answer


# -- the calls (host-neutral, lib_refdrop/library.py) -------------------------------------------------------------

summary = library.summary
_list = library.list_references
_details, _delete, _rename = library.details, library.delete, library.rename


def _preview_response(store: ReferenceStore, name: str) -> Response:
    return Response(content=library.preview(store, name), media_type="image/png", headers={"Cache-Control": "no-store"})


def _export_response(store: ReferenceStore, name: str) -> StreamingResponse:
    file, received, size = library.export(store, name)

    def chunks():
        try:
            yield from bundle.chunks_of(received, size)
        finally:
            received.close()

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Disposition": library.content_disposition(file),
                                      "Content-Length": str(size),
                                      "Cache-Control": "no-store"})


# -- errors ------------------------------------------------------------------------------------------------------


def _guarded(call: Callable):
    """Run one call and turn every failure into a JSON answer (the host's handlers differ between Forge/reForge)."""
    try:
        return call()
    except _WrongMethod as exc:
        return _method_not_allowed(exc.method, exc.path_name)
    except Exception as exc:  # noqa: BLE001 - an API client gets a message, the console keeps the server running
        return _error(*library.failure(exc))


def _error(status: int, kind: str, exc) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": kind, "detail": library.message(exc)})
