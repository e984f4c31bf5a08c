"""A store copied from someone else: planted links and special files are never followed, read or deleted through,
and a read that cannot complete fails its own Use without holding up any other reference."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import build
from lib_refdrop.reference.manifest import seal_manifest
from lib_refdrop.reference.store import INCOMING, MANIFEST, PREVIEW, TRASH, ReferenceStore
from lib_refdrop.run import RefDropRun
from tests.support import faultkit

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="this platform has no FIFOs")
SECRET = "the contents of a file outside the store"


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path):
    """A folder next to the store with files that must survive everything the store does."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(b"holiday")
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text(SECRET)
    return folder


def _plant_link(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()  # the store's own, empty between writes
    path.symlink_to(target, target_is_directory=True)


def _store_with(tmp_path, *names) -> ReferenceStore:
    store = ReferenceStore(tmp_path / "store")
    for i, name in enumerate(names):
        faultkit.make_reference(store, name, seed=i + 1)
    return store


# -- planted private folders (item 1) ------------------------------------------------------------------------


@pytest.mark.parametrize("private", [TRASH, INCOMING])
def test_opening_a_store_with_a_linked_private_folder_deletes_nothing_it_points_to(tmp_path, outside, private,
                                                                                  capsys):
    store = _store_with(tmp_path, "a")
    before = _tree(outside)
    _plant_link(store.root / private, outside)
    reopened = ReferenceStore(store.root)  # WebUI start, a Settings change
    assert _tree(outside) == before
    assert not (reopened.root / private).is_symlink()
    assert [p.name for p in reopened.root.glob(f"{private}.set-aside-*")]  # the link, kept for the user to see
    assert f"{private} was a link, not a folder; moved it aside" in capsys.readouterr().out
    assert reopened.names() == ["a"]


@pytest.mark.parametrize("private", [TRASH, INCOMING])
def test_save_delete_rename_overwrite_never_go_through_a_linked_private_folder(tmp_path, outside, private):
    store = _store_with(tmp_path, "a", "b")
    before = _tree(outside)
    _plant_link(store.root / private, outside)  # planted while the WebUI runs
    staging = store.begin("x", overwrite=False)
    assert Path(os.path.realpath(staging.folder)).parent == store.root / INCOMING  # a Save is written inside the store
    store.discard(staging)
    faultkit.make_reference(store, "new", seed=7)
    faultkit.make_reference(store, "a", seed=8, overwrite=True)
    store.rename("b", "c")
    store.delete("new")
    assert _tree(outside) == before
    assert not (store.root / private).is_symlink()
    assert store.names() == ["a", "c"]
    store.verify("a")
    store.verify("c")


def test_a_private_folder_that_is_a_file_is_set_aside(tmp_path):
    store = _store_with(tmp_path, "a")
    (store.root / TRASH).write_text("someone's file")
    store.delete("a")
    assert store.names() == []
    aside = list(store.root.glob(f"{TRASH}.set-aside-*"))
    assert len(aside) == 1 and aside[0].read_text() == "someone's file"


def test_clean_up_removes_only_what_the_store_creates(tmp_path):
    store = _store_with(tmp_path, "a")
    foreign = {store.root / INCOMING / "readme.txt": "x", store.root / TRASH / "keep-me": "y",
               store.root / INCOMING / "deadbeef": "a short hex name the store never makes"}
    for path, text in foreign.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    ReferenceStore(store.root)
    assert all(path.read_text() == text for path, text in foreign.items())


def test_a_link_planted_as_a_displaced_reference_is_not_restored_outside(tmp_path, outside):
    store = _store_with(tmp_path, "a")
    displaced = store.root / TRASH / f"replaced-{'ab' * 16}"
    displaced.mkdir(parents=True)
    (displaced / "..evil").symlink_to(outside, target_is_directory=True)
    ReferenceStore(store.root)
    assert not (store.root / "..evil").exists() and _tree(outside)
    assert store.names() == ["a"]


# -- links and special files inside a reference (item 2) -------------------------------------------------------


def _entry(store, name, index=0):
    return store.manifest(name)["slots"][index]["files"][0]


def _reseal(store, name, edit) -> None:
    """Change a reference's manifest and seal it again, as a forger (or a careless tool) would."""
    path = store.path(name) / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(seal_manifest(manifest)))


def _use_once(store, name, rfg=0.5):
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": name, "rfg": rfg}), store)
    patch = faultkit.attn1_patch(run, faultkit.pass_context())
    q = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    eo = {"block": ["input", 1], "block_index": 0, "n_heads": 2, "dim_head": 4, "cond_or_uncond": [1, 0],
          "sigmas": torch.tensor([14.6])}
    return patch(q, q, q, eo)


def _in_thread(call, timeout=20.0):
    """Run ``call`` in a thread; (finished, result or exception)."""
    box = {}

    def target():
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), box.get("error", box.get("result"))


def _unblock(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` (old code) reach end of file, so a failing test does not hang pytest."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def _read_through_a_fifo(path: Path, read, timeout: float = 5.0):
    """Put a FIFO where ``path`` was and call ``read`` in a thread: (finished in time, result or exception)."""
    path.unlink()
    os.mkfifo(path)
    try:
        return _in_thread(read, timeout=timeout)
    finally:
        _unblock(path)


def test_a_linked_preview_is_not_read(tmp_path, outside):
    store = _store_with(tmp_path, "a")
    preview = store.path("a") / PREVIEW
    preview.unlink()
    preview.symlink_to(outside / "notes" / "todo.txt")
    with pytest.raises(RefDropError, match="reference 'a' cannot be used: preview.png is a link"):
        store.read_preview("a")


@needs_fifo
def test_a_fifo_preview_is_refused_without_blocking(tmp_path):
    store = _store_with(tmp_path, "a")
    finished, outcome = _read_through_a_fifo(store.path("a") / PREVIEW, lambda: store.read_preview("a"))
    assert finished, "reading the preview blocked"
    assert isinstance(outcome, RefDropError) and "preview.png is a FIFO" in str(outcome)


def test_a_huge_sparse_preview_is_refused_before_it_is_read(tmp_path):
    store = _store_with(tmp_path, "a")
    preview = store.path("a") / PREVIEW
    try:
        os.truncate(preview, 8 * 1024**3)
    except OSError as exc:
        pytest.skip(f"this file system cannot hold an 8 GB sparse file: {exc}")
    with pytest.raises(RefDropError, match="has a preview of 8589934592 bytes"):
        store.read_preview("a")


@needs_fifo
def test_a_fifo_slot_fails_that_use_at_once_and_other_references_keep_working(tmp_path):
    store = _store_with(tmp_path, "good", "trap")
    entry = _entry(store, "trap")
    fifo = store.path("trap") / entry["file"]
    fifo.unlink()
    os.mkfifo(fifo)

    def empty_file(manifest):
        manifest["slots"][0]["files"][0].update(bytes=0, sha256=hashlib.sha256(b"").hexdigest())

    _reseal(store, "trap", empty_file)
    try:
        finished, outcome = _in_thread(lambda: _use_once(store, "trap"), timeout=10)
        assert finished, "Use of a reference with a FIFO slot hung"
        assert isinstance(outcome, RefDropError) and f"{entry['file']} is a FIFO" in str(outcome)
        finished, outcome = _in_thread(lambda: _use_once(store, "good"), timeout=10)
        assert finished and isinstance(outcome, torch.Tensor), outcome
    finally:
        _unblock(fifo)


def test_a_slot_linked_to_a_file_outside_is_not_read(tmp_path):
    store = _store_with(tmp_path, "a")
    entry = _entry(store, "a")
    slot = store.path("a") / entry["file"]
    copy = tmp_path / "outside-slot.safetensors"
    copy.write_bytes(slot.read_bytes())  # the same bytes: size and checksum would pass
    slot.unlink()
    slot.symlink_to(copy)
    with pytest.raises(RefDropError, match=f"reference 'a' cannot be used: {entry['file']} is a link"):
        store.verify("a")
    with pytest.raises(RefDropError, match=f"{entry['file']} is a link"):
        _use_once(store, "a")


@needs_fifo
def test_a_fifo_manifest_does_not_hang_the_list_or_the_details(tmp_path):
    store = _store_with(tmp_path, "good", "trap")
    finished, outcome = _read_through_a_fifo(store.path("trap") / MANIFEST, lambda: store.manifest("trap"))
    assert finished, "reading a FIFO manifest blocked"
    assert isinstance(outcome, RefDropError)
    store.verify("good")


def test_a_stuck_read_of_one_reference_does_not_hold_up_another(tmp_path, monkeypatch):
    """A network drive that stops answering: the reference on it waits, every other Use goes on."""
    import safetensors.torch

    store = _store_with(tmp_path, "good", "stuck")
    stuck_files = {(store.path("stuck") / e["file"]).read_bytes() for s in store.manifest("stuck")["slots"]
                   for e in s["files"]}
    release = threading.Event()
    real_load = safetensors.torch.load

    def load(data):
        if bytes(data) in stuck_files:
            release.wait(30)
        return real_load(data)

    monkeypatch.setattr(safetensors.torch, "load", load)
    from lib_refdrop.reference import reader as reader_module

    reader_module.RAM_CACHE.clear()
    monkeypatch.setattr(reader_module, "READ_TIMEOUT_S", 2.0)  # 300 s in use; the same code path, sooner
    try:
        box: list = []
        stuck = threading.Thread(target=lambda: box.append(_in_thread(lambda: _use_once(store, "stuck"), 10)))
        stuck.start()  # its read now hangs
        finished, outcome = _in_thread(lambda: _use_once(store, "good"), timeout=10)
        assert finished, "a Use of another reference waited for the stuck one"
        assert isinstance(outcome, torch.Tensor), outcome
        stuck.join(15)
        (stuck_finished, stuck_outcome), = box
        assert stuck_finished and isinstance(stuck_outcome, RefDropError), stuck_outcome
        assert "reading reference 'stuck'" in str(stuck_outcome) and "did not finish in 2 s" in str(stuck_outcome)
    finally:
        release.set()


# -- a manifest that lists one slot file in several slots (issue 18, item 1) ---------------------------------------


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd (Linux)")
def test_a_manifest_that_lists_one_file_in_many_slots_is_refused_and_leaves_no_descriptor_open(tmp_path):
    store = _store_with(tmp_path, "dup")
    path = store.path("dup") / MANIFEST
    manifest = json.loads(path.read_text())
    first = manifest["slots"][0]
    manifest["slots"] = [{**first, "index": i, "sigma": 14.6 - i * 1e-3} for i in range(3000)]
    path.write_text(json.dumps(seal_manifest(manifest)))
    before = _open_descriptors()
    for _ in range(3):
        with pytest.raises(RefDropError, match=rf"reference 'dup' has a broken manifest \({first['files'][0]['file']}"
                                               r" is listed more than once\)"):
            store.open("dup").close()
    assert _open_descriptors() == before
