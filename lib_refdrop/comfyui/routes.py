"""The reference library over ComfyUI's aiohttp server, with the JSON of the WebUIs' ``/refdrop/v1``
(``lib_refdrop/library.py`` does the work for both):

    GET    /refdrop/v1/references                   list with a summary of each reference
    POST   /refdrop/v1/references?name=&overwrite=  import a reference file (the body: <name>.refdrop.safetensors)
    GET    /refdrop/v1/references/{name}            full manifest + preview (base64 PNG or null)
    GET    /refdrop/v1/references/{name}/preview    the preview as image/png
    GET    /refdrop/v1/references/{name}/export     the reference as one file, <name>.refdrop.safetensors
    DELETE /refdrop/v1/references/{name}
    POST   /refdrop/v1/references/{name}/rename     {"new_name": "..."}

A name is found in the ``refdrop`` folders in ComfyUI's order (``folders.Library``); an import goes to the first
folder, where a Save goes. The store's work runs off the event loop. Every failure is ``{"error": kind, "detail":
message}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable

from .. import library
from ..errors import RefDropError
from ..reference import bundle
from .folders import Library

API_PREFIX = "/refdrop/v1"


def list_all(lib: Library) -> dict:
    """Every reference of every folder, each name once (the folder that wins its lookup)."""
    seen, entries = set(), []
    for store in lib.stores():
        bundle.adopt_received(store)  # reference files dropped into the folder
        names = [n for n in store.names() if n not in seen]
        seen.update(names)
        entries += library.list_references(store, names)["references"]
    return {"references": sorted(entries, key=lambda e: e["name"].lower())}


def on_store(lib: Library, name: str, call: Callable):
    return call(lib.store_of(name), name)


def rename_body(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise RefDropError('RefDrop: send the new name as JSON: {"new_name": "..."}') from None


def flag(value: str | None) -> bool:
    """The ``overwrite`` query parameter: true or false (absent: false), as the WebUIs' API reads it."""
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise RefDropError(f"RefDrop: overwrite must be true or false, got {value!r}")


def import_into(lib: Library, received, name: str | None, overwrite: str | None) -> dict:
    return library.import_file(lib.save_store(), received, name, flag(overwrite))


def add_routes(routes, lib: Library, web=None) -> None:
    """Add the routes to an aiohttp ``RouteTableDef`` (``PromptServer.instance.routes``); ``web``: aiohttp's
    ``web`` module (the tests give a stand-in)."""
    if web is None:
        from aiohttp import web

    def failed(exc: BaseException):
        status, kind, message = library.failure(exc)
        return web.json_response({"error": kind, "detail": message}, status=status)

    async def answer(call: Callable):
        try:
            result = await asyncio.to_thread(call)
        except Exception as exc:  # noqa: BLE001 - a client gets a message, the server keeps running
            return failed(exc)
        if isinstance(result, bytes):
            return web.Response(body=result, content_type="image/png", headers={"Cache-Control": "no-store"})
        return web.json_response(result)

    base = f"{API_PREFIX}/references"

    @routes.get(base)
    async def list_references(request):
        return await answer(lambda: list_all(lib))

    @routes.get(base + "/{name}/preview")
    async def reference_preview(request):
        name = request.match_info["name"]
        return await answer(lambda: on_store(lib, name, library.preview))

    @routes.post(base)
    async def import_reference(request):
        query = request.query
        try:  # nameless, beside the store it goes to: room for a reference
            received = await asyncio.to_thread(lambda: tempfile.TemporaryFile(dir=lib.save_store().root))
        except Exception as exc:  # noqa: BLE001 - answered like every failure
            return failed(exc)
        try:
            async for chunk in request.content.iter_chunked(bundle.COPY_CHUNK):  # to disk as it arrives
                await asyncio.to_thread(received.write, chunk)
            return await answer(lambda: import_into(lib, received, query.get("name"), query.get("overwrite")))
        finally:
            received.close()

    @routes.get(base + "/{name}/export")
    async def export_reference(request):
        name = request.match_info["name"]
        try:
            file, exported, size = await asyncio.to_thread(on_store, lib, name, library.export)
        except Exception as exc:  # noqa: BLE001 - answered like every failure
            return failed(exc)
        try:
            response = web.StreamResponse(headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size), "Cache-Control": "no-store",
                "Content-Disposition": library.content_disposition(file)})
            await response.prepare(request)
            for chunk in bundle.chunks_of(exported, size):
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            exported.close()

    @routes.post(base + "/{name}/rename")
    async def rename_reference(request):
        name, raw = request.match_info["name"], await request.read()
        return await answer(lambda: on_store(lib, name, lambda store, n: library.rename(store, n, rename_body(raw))))

    @routes.get(base + "/{name}")
    async def get_reference(request):
        name = request.match_info["name"]
        return await answer(lambda: on_store(lib, name, library.details))

    @routes.delete(base + "/{name}")
    async def delete_reference(request):
        name = request.match_info["name"]
        return await answer(lambda: on_store(lib, name, library.delete))
