"""Concurrency: list, read, delete and rename while a Save is writing; two clients saving the same name at once.
No crash, no torn reference, nothing half-written ever listed."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference import writer as writer_module
from lib_refdrop.reference.store import INCOMING, ReferenceStore
from lib_refdrop.reference.writer import pending_write
from tests.support import faultkit


@pytest.fixture
def slow_disk(monkeypatch):
    real = writer_module._write_file

    def slow(path, data):
        time.sleep(0.01)
        real(path, data)

    monkeypatch.setattr(writer_module, "_write_file", slow)


def test_list_read_delete_rename_while_a_save_is_writing(tmp_path, slow_disk):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "a", seed=1)
    faultkit.make_reference(store, "b", seed=2)
    contents = {1: faultkit.snapshot(store.path("a")), 2: faultkit.snapshot(store.path("b"))}
    writer = faultkit.start_reference(store, "busy", seed=3)
    errors, seen_busy = [], []

    def browse():  # the UI refreshing its dropdown and an API client reading details, in a loop
        while not writer.wait(0):
            try:
                viewer = ReferenceStore(tmp_path)  # e.g. another API request opening the store
                for name in viewer.names():
                    if name == "busy":
                        seen_busy.append(viewer.verify(name))  # listed means complete
                    else:
                        viewer.manifest(name)
            except RefDropError as exc:  # a reference renamed/deleted between list and read: fine, with a message
                if "not found" not in str(exc) and "deleted or renamed while" not in str(exc):
                    errors.append(exc)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    def edit():  # another client renaming and deleting other references meanwhile
        n = 0
        while not writer.wait(0):
            try:
                store.rename("a" if n % 2 == 0 else "a2", "a2" if n % 2 == 0 else "a")
                n += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        store.delete("b")

    threads = [threading.Thread(target=browse), threading.Thread(target=browse), threading.Thread(target=edit)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert writer.status.state == "saved", writer.status.message
    final = ReferenceStore(tmp_path)
    assert set(final.names()) in ({"a", "busy"}, {"a2", "busy"})
    for name in final.names():
        final.verify(name)
    survivor = "a" if "a" in final.names() else "a2"
    assert faultkit.snapshot(final.path(survivor)) == contents[1]
    assert faultkit.leftovers(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_clients_save_the_same_name_at_once(tmp_path, slow_disk, overwrite):
    store = ReferenceStore(tmp_path)
    writers = [faultkit.start_reference(store, "same", seed=s, overwrite=overwrite) for s in (10, 11)]
    assert pending_write(store, "same") in writers
    for w in writers:
        assert w.wait(60)
    states = sorted(w.status.state for w in writers)
    if overwrite:
        assert states == ["saved", "saved"]  # the later one replaces the earlier one, whole
    else:
        assert states == ["failed", "saved"]
        failed = next(w for w in writers if w.status.state == "failed")
        assert "appeared while saving" in failed.status.message
    assert store.names() == ["same"]
    store.verify("same")
    options = []
    for seed in (10, 11):
        other = ReferenceStore(tmp_path / f"expect{seed}")
        faultkit.make_reference(other, "x", seed=seed)
        options.append(faultkit.snapshot(other.path("x")))
    assert faultkit.snapshot(store.path("same")) in options
    assert pending_write(store, "same") is None
    assert faultkit.leftovers(tmp_path) == []


def test_use_waits_for_a_reference_that_is_still_being_written(tmp_path, slow_disk):
    from lib_refdrop.params import build
    from lib_refdrop.run import RefDropRun

    store = ReferenceStore(tmp_path)
    writer = faultkit.start_reference(store, "fresh", seed=4)
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "fresh", "rfg": 0.3}), store)
    patch = faultkit.attn1_patch(run, faultkit.pass_context())  # returns once the save is complete
    assert writer.status.state == "saved"
    assert patch.__name__ == "refdrop_use"


def test_a_save_in_one_store_holds_up_nothing_of_the_same_name_in_another(tmp_path, monkeypatch):
    """E.g. the store folder was changed in Settings while a Save ran (issue 18, item 7)."""
    from lib_refdrop import library
    from lib_refdrop import run as run_module
    from lib_refdrop.params import build
    from lib_refdrop.run import RefDropRun
    from lib_refdrop.webui import api

    store_a, store_b = ReferenceStore(tmp_path / "a"), ReferenceStore(tmp_path / "b")
    faultkit.make_reference(store_b, "same", seed=1)
    writer = writer_module.ReferenceWriter(store_a, "same", overwrite=False)  # a Save in A, far from finished
    try:
        monkeypatch.setattr(run_module, "WAIT_FOR_PENDING_SAVE_S", 0.2)
        run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "same", "rfg": 0.3}), store_b)
        assert run.for_pass(faultkit.pass_context()).attn1.__name__ == "refdrop_use"  # no wait, no "being written"
        run.release()
        assert library.list_entry(store_b, "same")["writing"] is False
        assert library.list_entry(store_a, "same")["writing"] is True
        assert api._delete(store_b, "same") == {"deleted": "same"}  # not 409 "being written"
    finally:
        writer.abort("the test is over")
        assert writer.wait(10)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_save_that_lands_from_another_process_just_before_the_rename_is_reported_by_name(tmp_path, monkeypatch,
                                                                                           overwrite):
    """Another process's Save of the same new name lands between this commit's check and its rename (forced
    timing): the loser says so in words, with no OS text or path, and the winner is untouched (issue 18, item 10)."""
    store, other = ReferenceStore(tmp_path / "store"), ReferenceStore(tmp_path / "other")
    faultkit.make_reference(other, "same", seed=2)
    winner = faultkit.snapshot(other.path("same"))
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == store.root / "same" and Path(src).parent.name == INCOMING and not os.path.lexists(dst):
            shutil.copytree(other.path("same"), dst)  # the other process's rename, a moment earlier
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    writer = faultkit.start_reference(store, "same", seed=3, overwrite=overwrite)
    assert writer.wait(30)
    assert writer.status.state == "failed"
    assert writer.status.message == ("RefDrop: reference 'same' was not saved: a reference named 'same' appeared "
                                     "while saving; not overwritten")
    assert faultkit.snapshot(store.path("same")) == winner
    store.verify("same")
    assert faultkit.leftovers(store.root) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a second process (POSIX)")
def test_the_check_then_rename_of_a_save_holds_across_processes(tmp_path):
    """While another process holds the store's name lock (between its own check and rename), a Save's commit
    waits for it."""
    store = ReferenceStore(tmp_path)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other process: no pytest, no cleanup handlers, only the lock
        try:
            with ReferenceStore(tmp_path).name_lock():
                os.write(ready_w, b"locked")
                time.sleep(1.0)
        except BaseException:
            os.write(ready_w, b"failed")
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 6) == b"locked", "the other process could not take the store's name lock"
        start = time.monotonic()
        faultkit.make_reference(store, "fresh", seed=5)
        waited = time.monotonic() - start
    finally:
        os.waitpid(pid, 0)
        os.close(ready_r)
    assert waited >= 0.5
    store.verify("fresh")
