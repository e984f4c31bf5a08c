"""The store: nothing is written outside it, nothing is unpickled, leftovers of dead writes are cleaned up while
live ones are left alone, and delete/rename/list behave with hostile names and planted files."""

from __future__ import annotations

import io
import json
import pickle
import shutil

import pytest
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import build
from lib_refdrop.reference.manifest import seal_manifest
from lib_refdrop.reference.store import INCOMING, MANIFEST, TRASH, ReferenceStore
from lib_refdrop.reference.writer import ReferenceWriter
from lib_refdrop.run import RefDropRun
from tests.support import faultkit

HOSTILE = ["../outside", "..", "a/../../b", "/tmp/abs", "C:\\evil", "a\x00b", ".incoming", ".trash", "", "CON",
           "x" * 300, "\U00020000" * 70, "sub/dir"]


def _tree(path):
    return {p.relative_to(path): p.stat().st_size for p in path.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """A store inside a folder whose other contents must never change."""
    (tmp_path / "neighbour").mkdir()
    (tmp_path / "neighbour" / "file.txt").write_text("keep me")
    store = ReferenceStore(tmp_path / "store")
    faultkit.make_reference(store, "real")
    return tmp_path, store


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_never_write_outside_the_store(sandbox, name):
    outer, store = sandbox
    before = {p: s for p, s in _tree(outer).items() if not str(p).startswith("store")}
    for op in (lambda: ReferenceWriter(store, name, overwrite=True), lambda: store.delete(name),
               lambda: store.rename("real", name), lambda: store.rename(name, "x"), lambda: store.manifest(name),
               lambda: store.begin(name, True), lambda: store.exists(name), lambda: store.path(name)):
        with pytest.raises(RefDropError):
            op()
    after = {p: s for p, s in _tree(outer).items() if not str(p).startswith("store")}
    assert after == before
    assert store.names() == ["real"]
    store.verify("real")


def test_hostile_save_name_through_a_generation_is_a_clear_error(tmp_path):
    store = ReferenceStore(tmp_path)
    run = RefDropRun(build({"enabled": True, "mode": "Save", "save_name": "../escape"}), store)
    with pytest.raises(RefDropError, match="may not contain"):
        faultkit.run_generation(run, faultkit.trace_calls(limit=1))
    assert list(tmp_path.parent.glob("escape*")) == []


def test_a_linked_reference_folder_is_listed_but_never_followed(sandbox):
    """A link can lead anywhere (a folder of someone's own files with a forged manifest): it is not read."""
    outer, store = sandbox
    elsewhere = outer / "elsewhere"
    shutil.copytree(store.path("real"), elsewhere)
    (store.root / "linked").symlink_to(elsewhere, target_is_directory=True)
    before = _tree(elsewhere)
    assert "linked" in store.names()
    for read in (store.verify, store.manifest, store.read_preview, store.open):
        with pytest.raises(RefDropError, match="reference 'linked' cannot be used: its folder is a link"):
            read("linked")
    with pytest.raises(RefDropError, match="is a link"):
        store.rename("linked", "other")
    store.delete("linked")  # removes the link, not what it points to
    assert _tree(elsewhere) == before and "linked" not in store.names()
    assert faultkit.leftovers(store.root) == []


def test_folders_with_invalid_names_are_not_listed(tmp_path):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "ok")
    for bad in ("bad name.", "CON", "a:b"):
        (tmp_path / bad).mkdir()
        (tmp_path / bad / MANIFEST).write_text("{}")
    (tmp_path / "no-manifest").mkdir()
    (tmp_path / "a-file").write_text("x")
    assert store.names() == ["ok"]


class _Boom:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_planted_pickle_payloads_are_ignored_or_rejected(tmp_path, no_unpickling):
    """A shared store with pickles planted in every place a loader might look: nothing is unpickled, the payload
    never runs, the planted references fail with a message and the real one still works."""
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "real")
    marker = tmp_path.parent / "pwned"
    payload = io.BytesIO()
    pickle.Pickler(payload).dump(_Boom(marker))
    payload = payload.getvalue()
    manifest = json.loads((store.path("real") / MANIFEST).read_text())

    # 1. pickles beside a valid reference, under names a careless loader would pick up
    shutil.copytree(store.path("real"), tmp_path / "extra")
    for planted in ("slot_0000_0.pt", "slot_0000_0.ckpt", "model.bin", "data.pkl"):
        (tmp_path / "extra" / planted).write_bytes(payload)
    # 2. a manifest that points at a pickle (sealed, so only the file rule can refuse it)
    shutil.copytree(store.path("real"), tmp_path / "points")
    (tmp_path / "points" / "evil.pt").write_bytes(payload)
    m = json.loads(json.dumps(manifest))
    m["slots"][0]["files"][0]["file"] = "evil.pt"
    (tmp_path / "points" / MANIFEST).write_text(json.dumps(seal_manifest(m)))
    # 3. a pickle under the expected safetensors name (size and checksum fixed up to match)
    shutil.copytree(store.path("real"), tmp_path / "disguised")
    entry = manifest["slots"][0]["files"][0]
    (tmp_path / "disguised" / entry["file"]).write_bytes(payload)
    import hashlib
    m = json.loads(json.dumps(manifest))
    m["slots"][0]["files"][0].update(bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    (tmp_path / "disguised" / MANIFEST).write_text(json.dumps(seal_manifest(m)))
    # 4. a pickle as the manifest itself
    (tmp_path / "manifest-pickle").mkdir()
    (tmp_path / "manifest-pickle" / MANIFEST).write_bytes(payload)

    from lib_refdrop.reference.reader import RamCache, ReferenceReader, slots_of

    store = ReferenceStore(tmp_path)
    store.verify("extra")  # the stray pickles are simply not part of the reference
    with pytest.raises(RefDropError, match="'points' has a broken manifest"):
        store.manifest("points")
    with pytest.raises(RefDropError, match="'manifest-pickle' has a corrupt manifest"):
        store.manifest("manifest-pickle")
    checked = store.manifest("disguised")
    reader = ReferenceReader(store.open("disguised"), cache=RamCache(1 << 20))
    with pytest.raises(RefDropError, match=r"'disguised' is corrupt: slot_\d+_\d\.safetensors is not a valid"):
        reader.stored_tensors(slots_of(checked)[0].index)
    for name in ("real", "extra"):
        reader = ReferenceReader(store.open(name), cache=RamCache(1 << 20))
        for slot in slots_of(store.manifest(name)):
            reader.stored_tensors(slot.index)
    assert not marker.exists()


def test_leftovers_of_dead_writes_are_removed_but_live_writes_are_kept(tmp_path):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "a")
    staging = store.begin("live", overwrite=False)  # a write in progress (this process holds its lock)
    live = staging.folder
    (live / "slot_0000_0.safetensors").write_bytes(b"partial")
    dead = tmp_path / INCOMING / ("deadbeef" * 4)  # names as the store makes them: a uuid4 in hex
    dead.mkdir()
    (dead / "slot_0000_0.safetensors").write_bytes(b"partial")
    (tmp_path / INCOMING / f"{'cafe' * 8}.lock").write_bytes(b"")  # lock file of a dead writer: free
    (tmp_path / TRASH / f"deleted-{'1' * 32}").mkdir(parents=True)
    (tmp_path / TRASH / f"deleted-{'1' * 32}" / "x").write_text("x")

    other = ReferenceStore(tmp_path)  # another store object (another tab, another process) opening the folder
    assert live.is_dir() and (live / "slot_0000_0.safetensors").is_file()
    assert not dead.exists() and not (tmp_path / INCOMING / f"{'cafe' * 8}.lock").exists()
    assert not (tmp_path / TRASH / f"deleted-{'1' * 32}").exists()
    assert other.names() == ["a"]
    store.discard(staging)
    ReferenceStore(tmp_path)
    assert faultkit.leftovers(tmp_path) == []


def test_rename_and_delete(tmp_path):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "a")
    faultkit.make_reference(store, "b", seed=3)
    content = faultkit.snapshot(store.path("a"))
    assert store.rename("a", " café ") == "café"
    assert store.names() == ["b", "café"] and store.manifest("café")["name"] == "café"
    assert faultkit.snapshot(store.path("café")) == content
    with pytest.raises(RefDropError, match="already exists"):
        store.rename("café", "b")
    with pytest.raises(RefDropError, match="not found"):
        store.rename("missing", "c")
    store.delete("b")
    with pytest.raises(RefDropError, match="not found"):
        store.delete("b")
    assert store.names() == ["café"] and faultkit.leftovers(tmp_path) == []


def test_missing_and_taken_names_have_their_own_error_types(tmp_path):
    """The REST API answers 404 and 409 from these types, without checking first (which would race)."""
    from lib_refdrop.errors import ReferenceExists, ReferenceNotFound

    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "a")
    faultkit.make_reference(store, "b", seed=2)
    for missing in (lambda: store.manifest("nope"), lambda: store.delete("nope"), lambda: store.rename("nope", "c")):
        with pytest.raises(ReferenceNotFound, match="'nope' not found"):
            missing()
    for taken in (lambda: store.rename("a", "b"), lambda: store.begin("a", overwrite=False)):
        with pytest.raises(ReferenceExists, match="'b' already exists|'a' already exists"):
            taken()
