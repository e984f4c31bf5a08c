"""The REST API on a real FastAPI app, and the two forms of ``alwayson_scripts`` args as the hosts deliver them.

The REST tests use small references written through the real writer; the named/positional comparison runs a
real Save and Use through the engine on a tiny hostsim U-Net.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from PIL import Image

from lib_refdrop.attn.patches import make_failing_patch
from lib_refdrop.errors import RefDropError
from lib_refdrop.params import RefDropSettings, build, from_args, to_args
from lib_refdrop.reference.address import entry_name
from lib_refdrop.reference.manifest import Recording
from lib_refdrop.reference.sigmas import Slot
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.reference.writer import ReferenceWriter
from lib_refdrop.run import RefDropRun
from lib_refdrop.webui.api import API_PREFIX, api_enabled, credentials_from_cmd_opts, register_routes
from tests.support import faultkit
from tests.support.hostsim import AttnHost, make_unet, sample
from tests.support.refdrop_harness import context

BASE = {"steps": 2, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
REFS = f"{API_PREFIX}/references"
CAT_INFO = {"prompt": "a cat", "seed": 1, "steps": 2, "sampler_name": "Euler", "width": 128, "height": 128}


def craft_reference(store, name, generation, preview):
    """A small but complete reference written through the real writer (one slot, one layer)."""
    writer = ReferenceWriter(store, name, overwrite=False)
    slot = Slot(index=0, sigma=14.6, occurrence=0)
    tensors = {entry_name("input1.0", chunk, t): torch.randn(4, 8) for chunk in ("uncond0", "cond0") for t in "kv"}
    writer.put_slot(slot, 0, tensors, ready=lambda: None)
    recording = Recording(layers={"input1.0": {"n_heads": 1, "dim_head": 8, "tokens": 4}},
                          chunks=["uncond0", "cond0"], dtype="float32", profile="exact", slots=[slot])
    writer.finish("sd15", generation, recording, preview)
    writer.wait(30)
    assert writer.status.state == "saved", writer.status.message


@pytest.fixture(scope="module")
def saved_root(tmp_path_factory):
    """A store with 'cat' (with preview) and 'dog' (without); tests work on copies of it."""
    root = tmp_path_factory.mktemp("saved") / "refs"
    store = ReferenceStore(root)
    craft_reference(store, "cat", CAT_INFO, Image.new("RGB", (16, 16), (200, 30, 30)))
    craft_reference(store, "dog", {"seed": 2, "prompt": "a dog"}, None)
    return root


@pytest.fixture
def store(saved_root, tmp_path):
    """A private copy of the saved store, with a decoy reference *outside* it that nothing may touch."""
    root = tmp_path / "refs"
    shutil.copytree(saved_root, root)
    shutil.copytree(saved_root / "cat", tmp_path / "outside")
    return ReferenceStore(root)


def make_client(store, credentials=None) -> TestClient:
    app = FastAPI()
    register_routes(app, lambda: store, credentials)
    return TestClient(app)


@pytest.fixture
def client(store):
    return make_client(store)


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


# -- list / get / preview ----------------------------------------------------------------------------------------


def test_list_summarises_every_reference(client):
    answer = client.get(REFS)
    assert answer.status_code == 200
    refs = answer.json()["references"]
    assert [r["name"] for r in refs] == ["cat", "dog"]
    cat = refs[0]
    assert cat["family"] == "sd15" and cat["profile"] == "exact" and not cat["writing"]
    assert (cat["width"], cat["height"], cat["steps"], cat["sampler"], cat["seed"], cat["prompt"]) == (
        128, 128, 2, "Euler", 1, "a cat")
    assert cat["bytes"] > 0 and cat["created"]
    assert "error" not in cat
    assert refs[1]["width"] is None and refs[1]["seed"] == 2


def test_a_broken_reference_is_listed_with_its_error(client, store):
    (store.root / "broken").mkdir()
    (store.root / "broken" / "manifest.json").write_text("{not json")
    (store.root / "newer").mkdir()
    (store.root / "newer" / "manifest.json").write_text('{"format_version": 99}')
    refs = {r["name"]: r for r in client.get(REFS).json()["references"]}
    assert set(refs) == {"broken", "cat", "dog", "newer"}
    assert "not valid JSON" in refs["broken"]["error"]
    assert "newer sd-refdrop" in refs["newer"]["error"]
    assert "error" not in refs["cat"]
    answer = client.get(f"{REFS}/broken")
    assert answer.status_code == 409 and "not valid JSON" in answer.json()["detail"]
    assert answer.json()["error"] == "unusable"


def test_a_reference_being_written_is_not_listed_and_an_overwrite_is_flagged(client, store):
    new = ReferenceWriter(store, "fresh", overwrite=False)
    replacing = ReferenceWriter(store, "cat", overwrite=True)
    try:
        refs = {r["name"]: r for r in client.get(REFS).json()["references"]}
        assert set(refs) == {"cat", "dog"}
        assert refs["cat"]["writing"] and not refs["dog"]["writing"]
        assert client.get(f"{REFS}/fresh").status_code == 404
        busy = client.delete(f"{REFS}/cat")
        assert busy.status_code == 409 and "being written" in busy.json()["detail"]
        assert client.post(f"{REFS}/dog/rename", json={"new_name": "fresh"}).status_code == 409
        assert store.exists("cat")
    finally:
        for writer in (new, replacing):
            writer.abort("test over")
            writer.wait(10)
    assert not client.get(REFS).json()["references"][0]["writing"]


def test_get_returns_the_manifest_and_the_preview(client, store):
    cat = client.get(f"{REFS}/cat").json()
    assert cat["name"] == "cat" and cat["manifest"] == store.manifest("cat") and not cat["writing"]
    assert cat["summary"]["seed"] == 1
    png = base64.b64decode(cat["preview"])
    assert png == store.read_preview("cat")
    assert Image.open(io.BytesIO(png)).size == (16, 16)
    assert client.get(f"{REFS}/dog").json()["preview"] is None


def test_preview_is_a_png(client, store):
    answer = client.get(f"{REFS}/cat/preview")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content == store.read_preview("cat")
    missing = client.get(f"{REFS}/dog/preview")
    assert missing.status_code == 404 and "no preview" in missing.json()["detail"]


# -- planted previews: links, FIFOs, huge sparse files (the store is untrusted) -----------------------------------

SECRET = "TOP-SECRET-7f3a"


def answer_within(seconds: float, call):
    """``call()`` in a daemon thread: a request that hangs (a FIFO read on old code) fails the test, not the run."""
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("answer", call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"no answer within {seconds} s"
    return result["answer"]


def plant_preview(store, make) -> Path:
    preview = store.root / "cat" / "preview.png"
    preview.unlink()
    make(preview)
    return preview


def assert_refused_on_both_routes(client, words: str) -> None:
    """The preview route answers 409 with the store's message; the details call still answers, without a preview.

    Failure messages show statuses and the store's message only: a body that leaked a file must not reach the log."""
    preview = answer_within(10, lambda: client.get(f"{REFS}/cat/preview"))
    shown = f"{preview.status_code} {preview.headers.get('content-type')}"
    assert preview.status_code == 409 and preview.headers["content-type"] == "application/json", shown
    assert preview.json()["error"] == "unusable" and words in preview.json()["detail"], preview.json()["detail"]
    details = answer_within(10, lambda: client.get(f"{REFS}/cat"))
    assert details.status_code == 200, details.status_code
    body = details.json()
    assert body["preview"] is None, "the details call returned a preview"
    assert words in body["preview_error"], body["preview_error"]
    assert body["manifest"]["name"] == "cat"


@pytest.mark.parametrize("target", ["secret file", "/proc/self/environ"])
def test_a_preview_that_is_a_link_is_never_served(client, store, tmp_path, target):
    if target == "secret file":
        target = tmp_path / "secret.txt"
        target.write_text(SECRET)
    elif not Path(target).exists():
        pytest.skip(f"{target} does not exist on this platform")
    plant_preview(store, lambda preview: preview.symlink_to(target))
    assert_refused_on_both_routes(client, "is a link")
    for url in (f"{REFS}/cat/preview", f"{REFS}/cat"):
        text = client.get(url).text
        leaked = SECRET in text or base64.b64encode(SECRET.encode()).decode() in text
        assert not leaked, f"{url} served the file the link points to"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_preview_that_is_a_fifo_is_answered_without_hanging(client, store):
    fifo = plant_preview(store, os.mkfifo)
    try:
        assert_refused_on_both_routes(client, "is a FIFO")
    finally:
        _release_fifo_readers(fifo)


def _release_fifo_readers(fifo: Path) -> None:
    """Open the FIFO for writing and close it: a reader blocked in open() (old code) then sees EOF and ends."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader is waiting: nothing to release
        pass


def test_a_huge_sparse_preview_is_refused_without_reading_it(client, store):
    preview = store.root / "cat" / "preview.png"
    try:
        os.truncate(preview, 8 * 2**30)  # 8 GB that take no disk space
    except OSError as exc:
        pytest.skip(f"this file system cannot hold an 8 GB sparse file: {exc}")
    read_before = _bytes_read_by_this_process()
    started = time.monotonic()
    assert_refused_on_both_routes(client, "more than the 64 MB")
    assert time.monotonic() - started < 5
    if read_before is not None:
        assert _bytes_read_by_this_process() - read_before < 2**20  # refused from its size, not after reading it


def _bytes_read_by_this_process() -> int | None:
    try:
        return psutil.Process().io_counters().read_chars  # every read(), cached or not (Linux)
    except (AttributeError, psutil.Error):
        return None


# -- delete / rename -----------------------------------------------------------------------------------------------


def test_delete(client, store):
    answer = client.delete(f"{REFS}/cat")
    assert answer.status_code == 200 and answer.json() == {"deleted": "cat"}
    assert not (store.root / "cat").exists()
    assert [r["name"] for r in client.get(REFS).json()["references"]] == ["dog"]
    assert client.delete(f"{REFS}/cat").status_code == 404


def test_rename(client, store):
    answer = client.post(f"{REFS}/cat/rename", json={"new_name": "Tabby cat (v2)"})
    assert answer.status_code == 200 and answer.json() == {"old_name": "cat", "name": "Tabby cat (v2)"}
    assert [r["name"] for r in client.get(REFS).json()["references"]] == ["dog", "Tabby cat (v2)"]
    assert store.manifest("Tabby cat (v2)")["name"] == "Tabby cat (v2)"
    assert client.get(f"{REFS}/Tabby cat (v2)/preview").status_code == 200
    assert client.get(f"{REFS}/cat").status_code == 404


def test_rename_refusals_leave_the_disk_alone(client, store, tmp_path):
    before = snapshot(tmp_path)
    cases = [
        ("dog", {"new_name": "Tabby cat (v2)"}, 404),
        ("cat", {"new_name": "dog"}, 409),
        ("cat", {"new_name": "../outside"}, 400),
        ("cat", {"new_name": "a/b"}, 400),
        ("cat", {"new_name": ""}, 400),
        ("cat", {"new_name": "x\x00y"}, 400),
        ("cat", {"new_name": 5}, 400),
        ("cat", {"name": "kitty"}, 400),
        ("cat", {"new_name": "kitty", "overwrite": True}, 400),
    ]
    for old, body, status in cases:
        if old == "dog" and status == 404:
            old = "nobody"
        answer = client.post(f"{REFS}/{old}/rename", json=body)
        assert answer.status_code == status, (old, body, answer.text)
        assert answer.json()["detail"].startswith("RefDrop:"), answer.text
    for body in (b"not json", b"\xff", b"[" * 100_000, b"null", b"[]"):
        answer = client.post(f"{REFS}/cat/rename", content=body)
        assert answer.status_code == 400 and answer.json()["error"] == "RefDropError", (body[:10], answer.text)
    assert snapshot(tmp_path) == before


# -- unknown and invalid names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("GET", "/preview"), ("DELETE", ""), ("POST", "/rename")])
def test_unknown_name_is_404_with_a_message(client, method, suffix):
    answer = client.request(method, f"{REFS}/lion{suffix}", json={"new_name": "tiger"} if method == "POST" else None)
    assert answer.status_code == 404
    body = answer.json()
    assert body["error"] == "not_found" and "'lion' not found" in body["detail"] and "cat, dog" in body["detail"]


BAD_NAMES = ["a/b", "..", "%2E%2E", "a%0Ab", "%0A", "%0D%0A",
             "..%2Foutside", "%2E%2E%2Foutside", "a%2Fb", "%2F", "x%00y", "%00", "",
             "con", ".hidden", "cat%5C..%5C..", "../outside", "../../refs/cat"]


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("GET", "/preview"), ("DELETE", ""), ("POST", "/rename")])
def test_invalid_names_are_refused_and_touch_nothing(client, tmp_path, method, suffix):
    before = snapshot(tmp_path)
    for bad in BAD_NAMES:
        body = {"new_name": "renamed"} if method == "POST" else None
        answer = client.request(method, f"{REFS}/{bad}{suffix}", json=body)
        assert 400 <= answer.status_code < 500, (bad, answer.status_code, answer.text)
        assert "Traceback" not in answer.text
    assert snapshot(tmp_path) == before


def test_encoded_separators_reach_the_name_check(client):
    for bad in ("..%2Foutside", "a%2Fb", "%00", "%2E%2E", "a%0Ab", "%0A..%2Foutside"):
        answer = client.delete(f"{REFS}/{bad}")
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["error"] == "RefDropError"


@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "cat/preview", "GET"), ("POST", "cat/preview", "GET"), ("GET", "cat/rename", "POST"),
    ("DELETE", "cat/rename", "POST"), ("PUT", "cat/rename", "POST"), ("PUT", "cat", "GET, DELETE"),
    ("PATCH", "cat", "GET, DELETE"), ("POST", "cat", "GET, DELETE"), ("OPTIONS", "cat", "GET, DELETE"),
])
def test_a_method_a_path_does_not_have_is_405_naming_the_ones_it_has(client, store, method, path, allowed):
    answer = client.request(method, f"{REFS}/{path}")
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allowed and answer.json()["error"] == "method_not_allowed"
    assert store.exists("cat") and store.read_preview("cat")


# -- auth ------------------------------------------------------------------------------------------------------------


def test_credentials_from_cmd_opts():
    parse = credentials_from_cmd_opts
    assert parse(SimpleNamespace(api_auth="alice:s3cret,bob:p:ss")) == {"alice": "s3cret", "bob": "p:ss"}
    assert parse(SimpleNamespace(api_auth=None)) is None
    assert parse(SimpleNamespace(api_auth="")) is None
    assert parse(SimpleNamespace()) is None
    assert api_enabled(SimpleNamespace(api=True, nowebui=False))
    assert api_enabled(SimpleNamespace(api=False, nowebui=True))
    assert not api_enabled(SimpleNamespace(api=False, nowebui=False))


def test_auth_is_required_when_credentials_are_given(store):
    client = make_client(store, {"alice": "s3cret", "bob": "p:ss", "zoë": "naïve"})
    urls = [("GET", REFS), ("GET", f"{REFS}/cat"), ("GET", f"{REFS}/cat/preview"), ("DELETE", f"{REFS}/cat"),
            ("POST", f"{REFS}/cat/rename")]
    for method, url in urls:
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret"), ("alice", "")):
            answer = client.request(method, url, auth=auth, json={"new_name": "x"})
            assert answer.status_code == 401, (method, url, auth)
    assert store.exists("cat")
    assert client.get(REFS).headers["www-authenticate"] == "Basic"
    assert client.get(REFS, auth=("alice", "s3cret")).status_code == 200
    assert client.get(f"{REFS}/cat/preview", auth=("bob", "p:ss")).status_code == 200
    assert client.delete(f"{REFS}/dog", auth=("alice", "s3cret")).status_code == 200


def test_registering_again_replaces_the_routes(store):
    app = FastAPI()
    register_routes(app, lambda: store)
    register_routes(app, lambda: store, {"alice": "s3cret"})
    # the list, an import and their 405; a reference's preview, export, rename, details, delete and their 405
    assert sum(getattr(r, "path", "").startswith(API_PREFIX) for r in app.router.routes) == 9
    assert TestClient(app).get(REFS).status_code == 401


def test_an_unreadable_store_is_a_json_error(store):
    def broken_store():
        raise OSError(13, "Permission denied", "/models/RefDrop")

    answer = TestClient(_app(broken_store)).get(REFS)
    assert answer.status_code == 500
    assert answer.json() == {"error": "OSError", "detail": "RefDrop: the reference library could not be read or "
                             "changed: Permission denied: /models/RefDrop"}


def _app(get_store):
    app = FastAPI()
    register_routes(app, get_store)
    return app


# -- alwayson_scripts args: named form vs positional form ------------------------------------------------------------

UI_DEFAULTS = to_args(RefDropSettings())  # what init_default_script_args() reads from the ui() controls


def host_script_args(request_args: list, defaults: list = UI_DEFAULTS) -> tuple:
    """What the hook receives: ``Api.init_script_args`` overwrites the first positions, the rest keep UI defaults."""
    args = list(defaults)
    for i in range(min(len(args), len(request_args))):
        args[i] = request_args[i]
    return tuple(args)


EQUIVALENT_FORMS = [
    ({"mode": "use", "reference": "cat", "rfg": 0.4},
     [True, "Use", 0.4, "cat"]),
    ({"enabled": True, "mode": "Save", "save_name": "kitty", "overwrite": True},
     [True, "Save", 0.3, "", "kitty", [], [], False, 0.0, 1.0, False, True]),
    ({"mode": "Use", "ref": "cat", "coefficient": -0.5, "disabled_blocks": "out00, mid", "skip_first_up": "true",
      "step_start": 0.0, "step_end": 0.75},
     [True, "Use", -0.5, "cat", "", [], ["M00", "OUT00"], True, 0.0, 0.75]),
    ({"enabled": 1, "mode": "USE", "reference": "cat", "rfg": "0.2", "disabled_groups": ["output", "input"],
      "apply_hires": True},
     [True, "Use", 0.2, "cat", "", ["input", "output"], [], False, 0.0, 1.0, True]),
    ({"enabled": False, "mode": "Use", "reference": "cat"},
     [False, "Use", 0.3, "cat"]),
    ({}, []),
    ({"mode": "use", "reference": "cat", "reference_2": "dog", "rfg_coefficient_2": 0.2, "source_3": "batch",
      "coefficient_3": -0.1},
     [True, "Use", 0.3, "cat", "", [], [], False, 0.0, 1.0, False, False, "", "reference", "generation", None, "",
      None, "dog", 0.2, "reference", None, None, "", -0.1, "batch"]),
]


@pytest.mark.parametrize("named, positional", EQUIVALENT_FORMS)
def test_named_and_positional_forms_give_equal_settings(named, positional):
    from_named = from_args(host_script_args([named]))
    assert from_named == from_args(host_script_args(positional))
    assert from_args(to_args(from_named)) == from_named


@pytest.mark.parametrize("named, words", [
    ({"mode": "use", "reference": "cat", "strength": 0.4}, ["unknown argument", "strength", "rfg"]),
    ({"mode": "use", "reference": "cat", "rfg": 1.5}, ["RFG coefficient", "[-1, 1]", "1.5"]),
    ({"mode": "paint"}, ["mode must be one of Save, Use", "paint"]),
    ({"mode": "use", "disabled_blocks": ["OUT12"]}, ["unknown block", "OUT12"]),
    ({"mode": "use", "step_start": 0.8, "step_end": 0.2}, ["step window is empty"]),
])
def test_bad_named_args_give_a_clear_message(named, words):
    with pytest.raises(RefDropError) as info:
        from_args(host_script_args([named]))
    assert all(word in str(info.value) for word in words), str(info.value)


def test_both_forms_generate_the_same_latent(tmp_path):
    named, positional = EQUIVALENT_FORMS[2]  # the richest set: aliases, blocks, step window
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path / "refs")
    latents = []
    for mode, request_args in (("Save", [True, "Save", 0.3, "", "cat"]), ("Use", [named]), ("Use", positional)):
        run = RefDropRun(from_args(host_script_args(request_args)), store)
        host.patch = faultkit.attn1_patch(run, context("sd15", seed=7 if mode == "Use" else 1))
        assert host.patch is not None  # RefDrop is on, not silently skipped (its effect is test_engine_unet's job)
        try:
            latents.append(sample(host, **{**BASE, "seed": 7 if mode == "Use" else 1}))
        finally:
            host.patch = None
        if mode == "Save":
            run.finish_save({"seed": 1}, None)
            run.writer.wait(60)
            assert run.writer.status.state == "saved", run.writer.status.message
    assert torch.equal(latents[1], latents[2])


# -- what an API client sees when RefDrop aborts a generation ---------------------------------------------------------


def host_like_generation_app() -> FastAPI:
    """A stand-in for /sdapi/v1/txt2img: script args -> settings -> attn1 patch, behind an exception handler that
    answers like the hosts' (status ``vars(e).get("status_code", 500)``, body with the type, detail and message)."""
    app = FastAPI()

    @app.exception_handler(Exception)
    def host_handler(request, exc):
        return JSONResponse(status_code=vars(exc).get("status_code", 500), content={
            "error": type(exc).__name__, "detail": vars(exc).get("detail", ""), "body": "", "errors": str(exc)})

    @app.post("/sdapi/v1/txt2img")
    def txt2img(request: dict):
        args = host_script_args(request["alwayson_scripts"]["RefDrop"]["args"])
        try:
            patch = faultkit.attn1_patch(RefDropRun(from_args(args), ReferenceStore(request["store"])), context("sd15"))
        except RefDropError as exc:  # the script must do this: hook exceptions are swallowed by the hosts
            patch = make_failing_patch(str(exc))
        q = torch.zeros(2, 4, 8)
        patch(q, q, q, {"n_heads": 1, "dim_head": 8, "cond_or_uncond": [1, 0], "block": ("input", 1), "block_index": 0,
                        "sigmas": torch.tensor([14.6])})
        return {"images": []}

    return app


BAD_REQUESTS = [
    ({"mode": "use", "reference": "cat", "strength": 0.4}, "unknown argument(s) strength"),
    ({"mode": "use", "reference": "cat", "rfg": 2}, "RFG coefficient must lie in [-1, 1]"),
    ({"mode": "use", "reference": "lion"}, "reference 'lion' not found"),
    ({"mode": "use", "source": "image", "image": base64.b64encode(b"GIF89a" + bytes(20)).decode()},
     "'image' is not a PNG, JPEG or WebP image"),
    ({"mode": "use", "reference": "cat", "rfg_2": 0.3}, "slot 2 is on (rfg_2 = 0.3) but no reference is selected"),
]


@pytest.mark.parametrize("named, words", BAD_REQUESTS)
def test_a_bad_generation_request_gets_refdrops_message(tmp_path, named, words):
    client = TestClient(host_like_generation_app(), raise_server_exceptions=False)
    answer = client.post("/sdapi/v1/txt2img", json={"store": str(tmp_path), "alwayson_scripts": {"RefDrop": {
        "args": [named]}}})
    body = answer.json()
    assert body["error"] == "RefDropError" and words in body["errors"], body


@pytest.mark.parametrize("named, words", BAD_REQUESTS)
def test_a_bad_generation_request_is_a_400_with_the_message_in_detail(tmp_path, named, words):
    client = TestClient(host_like_generation_app(), raise_server_exceptions=False)
    answer = client.post("/sdapi/v1/txt2img", json={"store": str(tmp_path), "alwayson_scripts": {"RefDrop": {
        "args": [named]}}})
    assert answer.status_code == 400 and words in answer.json()["detail"], answer.text


def test_named_form_takes_the_panel_defaults_for_what_it_does_not_name():
    panel = to_args(build({"rfg": 0.9, "reference": "dog", "overwrite": True}))  # e.g. Settings > default RFG 0.9
    settings = from_args(host_script_args([{"mode": "use", "reference": "cat"}], panel))
    assert (settings.rfg, settings.reference, settings.overwrite) == (0.9, "cat", True)


def test_images_travel_as_base64_in_either_form():
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (10, 200, 30)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    named = from_args(host_script_args([{"mode": "use", "source": "image", "image": f"data:image/png;base64,{image}",
                                         "rfg": 0.5}]))
    positional = from_args(host_script_args([True, "Use", 0.5, "", "", [], [], False, 0.0, 1.0, False, False, "",
                                             "image", "generation", image]))
    assert named == positional and named.slots[0].image.getpixel((0, 0)) == (10, 200, 30)


def test_a_named_dict_without_mode_or_enabled_means_on():
    assert from_args(host_script_args([{"reference": "cat", "rfg": 0.4}])).using


@pytest.mark.parametrize("named", [{"mode": "use", "rfg": 0.4, "coefficient": 0.5}, {"mode": "use", "step_end": True}])
def test_ambiguous_named_args_are_refused(named):
    with pytest.raises(RefDropError):
        from_args(host_script_args([named]))
