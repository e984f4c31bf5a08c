"""The reference library over ComfyUI's aiohttp server, with the JSON of the WebUIs' ``/refdrop/v1``
(``lib_refdrop/library.py`` does the work for both):

    GET    /refdrop/v1/references                   list with a summary of each reference
    GET    /refdrop/v1/references/{name}            full manifest + preview (base64 PNG or null)
    GET    /refdrop/v1/references/{name}/preview    the preview as image/png
    DELETE /refdrop/v1/references/{name}
    POST   /refdrop/v1/references/{name}/rename     {"new_name": "..."}

A name is found in the ``refdrop`` folders in ComfyUI's order (``folders.Library``); the store's work runs off the
event loop. Every failure is ``{"error": kind, "detail": message}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from .. import library
from ..errors import RefDropError
from .folders import Library

API_PREFIX = "/refdrop/v1"


def list_all(lib: Library) -> dict:
    """Every reference of every folder, each name once (the folder that wins its lookup)."""
    seen, entries = set(), []
    for store in lib.stores():
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


def add_routes(routes, lib: Library, web=None) -> None:
    """Add the routes to an aiohttp ``RouteTableDef`` (``PromptServer.instance.routes``); ``web``: aiohttp's
    ``web`` module (the tests give a stand-in)."""
    if web is None:
        from aiohttp import web

    async def answer(call: Callable):
        try:
            result = await asyncio.to_thread(call)
        except Exception as exc:  # noqa: BLE001 - a client gets a message, the server keeps running
            status, kind, message = library.failure(exc)
            return web.json_response({"error": kind, "detail": message}, status=status)
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
