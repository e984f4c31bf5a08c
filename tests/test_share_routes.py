"""A reference file over HTTP: ``GET /refdrop/v1/references/{name}/export`` downloads it, ``POST
/refdrop/v1/references`` imports one, on the WebUIs' FastAPI app and on ComfyUI's aiohttp routes alike."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_refdrop import library
from lib_refdrop.comfyui.folders import Library
from lib_refdrop.comfyui.routes import add_routes
from lib_refdrop.reference import bundle
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.webui.api import API_PREFIX, register_routes
from tests.support.faultkit import leftovers, make_reference, snapshot

REFS = f"{API_PREFIX}/references"


@pytest.fixture
def stores(tmp_path):
    sender, receiver = ReferenceStore(tmp_path / "sender"), ReferenceStore(tmp_path / "receiver")
    make_reference(sender, "cat", seed=1)
    make_reference(receiver, "dog", seed=2)
    return sender, receiver


def client(store) -> TestClient:
    app = FastAPI()
    register_routes(app, lambda: store)
    return TestClient(app)


def test_the_webui_api_exports_and_imports(stores, tmp_path):
    sender, receiver = stores
    answer = client(sender).get(f"{REFS}/cat/export")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    assert 'filename="cat.refdrop.safetensors"' in answer.headers["content-disposition"]
    assert answer.content == bundle.export_reference(sender, "cat", tmp_path).read_bytes()
    assert library.content_disposition("猫.refdrop.safetensors") == (
        "attachment; filename=\"_.refdrop.safetensors\"; filename*=UTF-8''%E7%8C%AB.refdrop.safetensors")
    api = client(receiver)
    imported = api.post(REFS, content=answer.content)
    assert imported.status_code == 200 and imported.json()["name"] == "cat"
    assert imported.json()["summary"]["family"] == "sd15" and receiver.manifest("cat") == sender.manifest("cat")
    clash = api.post(REFS, content=answer.content)
    assert clash.status_code == 409 and clash.json()["error"] == "conflict" and "already exists" in clash.json()[
        "detail"]
    assert api.post(f"{REFS}?name=tom&overwrite=false", content=answer.content).json()["name"] == "tom"
    assert api.post(f"{REFS}?name=dog&overwrite=true", content=answer.content).status_code == 200
    assert receiver.manifest("dog")["generation"] == sender.manifest("cat")["generation"]
    assert sorted(receiver.names()) == ["cat", "dog", "tom"] and leftovers(receiver.root) == []


def test_the_webui_api_refuses_a_bad_file_or_query_and_changes_nothing(stores):
    sender, receiver = stores
    data = client(sender).get(f"{REFS}/cat/export").content
    before = snapshot(receiver.path("dog"), with_manifest=True)
    api = client(receiver)
    bad = api.post(REFS, content=data[:-1])
    assert bad.status_code == 409 and bad.json()["error"] == "unusable"
    assert bad.json()["detail"].startswith("RefDrop: the received file was not imported: it is not a RefDrop")
    assert api.post(f"{REFS}?name=../x", content=data).status_code == 400
    assert api.post(f"{REFS}?overwrite=maybe", content=data).json()["detail"] == (
        "RefDrop: overwrite must be true or false, got 'maybe'")
    assert api.get(f"{REFS}/nobody/export").status_code == 404
    assert api.get(f"{REFS}/a%2Fb/export").status_code == 400
    assert api.delete(REFS).status_code == 405 and api.delete(REFS).headers["allow"] == "GET, POST"
    assert receiver.names() == ["dog"] and snapshot(receiver.path("dog"), with_manifest=True) == before
    assert leftovers(receiver.root) == [] and [p.name for p in receiver.root.iterdir() if p.is_file()] == []


def test_a_corrupt_reference_is_not_exported(stores):
    sender, _ = stores
    slot = sender.path("cat") / "slot_0001_0.safetensors"
    slot.write_bytes(bytes([slot.read_bytes()[0] ^ 1]) + slot.read_bytes()[1:])
    answer = client(sender).get(f"{REFS}/cat/export")
    assert answer.status_code == 409 and "slot_0001_0.safetensors does not match its checksum" in answer.json()[
        "detail"]


# -- ComfyUI --------------------------------------------------------------------------------------------------------


class _Routes:
    def __init__(self):
        self.table = {}

    def __getattr__(self, method):
        return lambda path: (lambda handler: self.table.setdefault((method.upper(), path), handler))


class _Stream:
    """aiohttp's ``StreamResponse`` as far as the export uses it."""

    def __init__(self, headers):
        self.headers, self.body, self.status = headers, b"", 200

    async def prepare(self, request):
        pass

    async def write(self, data):
        self.body += data

    async def write_eof(self):
        pass


class _Web:
    StreamResponse = _Stream

    @staticmethod
    def json_response(body, status=200):
        return status, json.loads(json.dumps(body))


class _Content:
    def __init__(self, body):
        self._body = body

    async def iter_chunked(self, size):
        for start in range(0, len(self._body), size):
            yield self._body[start:start + size]


class _Request:
    def __init__(self, name=None, body=b"", query=None):
        self.match_info, self.query, self.content = {"name": name}, query or {}, _Content(body)


def test_comfyuis_routes_export_and_import(stores, tmp_path):
    sender, receiver = stores
    lib = Library(lambda: [str(receiver.root), str(sender.root)])
    routes = _Routes()
    add_routes(routes, lib, web=_Web)

    def call(method, path, *args, **kwargs):
        return asyncio.run(routes.table[(method, REFS + path)](_Request(*args, **kwargs)))

    exported = call("GET", "/{name}/export", "cat")  # found in the second folder
    assert exported.headers["Content-Disposition"] == (
        "attachment; filename=\"cat.refdrop.safetensors\"; filename*=UTF-8''cat.refdrop.safetensors")
    assert exported.body == bundle.export_reference(sender, "cat", tmp_path).read_bytes()
    status, body = call("POST", "", body=exported.body, query={"name": "tom"})
    assert status == 200 and body["name"] == "tom" and receiver.exists("tom")  # into the first folder
    status, body = call("POST", "", body=exported.body, query={"name": "dog"})
    assert status == 409 and body["error"] == "conflict"
    assert call("POST", "", body=b"junk")[1]["error"] == "unusable"
    assert call("GET", "/{name}/export", "nobody")[0] == 404
    (receiver.root / "felix.refdrop.safetensors").write_bytes(exported.body)  # dropped into the folder
    status, body = call("GET", "")
    assert [entry["name"] for entry in body["references"]] == ["cat", "dog", "felix", "tom"]
    assert lib.names() == ["cat", "dog", "felix", "tom"]
