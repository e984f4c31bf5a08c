"""Disk full / write errors during Save: the generation still returns its image, the status says the reference
was not saved and why, and no partial file stays behind."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest
import torch

from lib_refdrop.params import build
from lib_refdrop.reference import writer as writer_module
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.run import RefDropRun
from tests.support import faultkit
from tests.support.hostsim import host_attention


def _save_run(store, name="cat"):
    return RefDropRun(build({"enabled": True, "mode": "Save", "save_name": name}), store)


def _assert_generation_unharmed(outputs, calls):
    for out, (q, k, v, eo) in zip(outputs, calls, strict=True):
        assert torch.equal(out, host_attention(q, k, v, eo))


def _assert_not_saved(store, run, why: str):
    assert run.writer.wait(30)
    status = run.writer.status
    assert status.state == "failed"
    assert "'cat' was not saved" in status.message and why in status.message, status.message
    assert "cat" not in store.names()
    assert faultkit.leftovers(store.root) == []  # the partial files are gone


def _failing_after(n_ok: int, err: int):
    real = writer_module._write_file
    calls = [0]

    def write_file(path, data):
        calls[0] += 1
        if calls[0] > n_ok:
            with open(path, "wb") as fh:  # a partial file, as a real full disk leaves
                fh.write(data[: len(data) // 3])
            raise OSError(err, os.strerror(err), str(path))
        real(path, data)

    return write_file


@pytest.mark.parametrize("n_ok", [0, 2])
def test_disk_full_during_save(tmp_path, monkeypatch, n_ok):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "older")
    before = faultkit.snapshot(store.path("older"))
    monkeypatch.setattr(writer_module, "_write_file", _failing_after(n_ok, errno.ENOSPC))
    calls = list(faultkit.trace_calls(limit=48))  # 3 model evaluations: 3 files and a preview
    run = _save_run(store)
    outputs = faultkit.run_generation(run, calls)
    text = run.finish_save({"seed": 1}, faultkit.PNG)
    _assert_generation_unharmed(outputs, calls)
    assert "saving reference 'cat'" in text
    _assert_not_saved(store, run, "the disk is full")
    assert faultkit.snapshot(store.path("older")) == before


def test_disk_full_while_writing_the_manifest(tmp_path, monkeypatch):
    store = ReferenceStore(tmp_path)
    def full(path, data, *a, **kw):
        path.with_name(".manifest.partial").write_text("{")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "write_json_atomic", full)
    run = _save_run(store)
    faultkit.run_generation(run, faultkit.trace_calls(limit=8))
    run.finish_save({}, None)
    _assert_not_saved(store, run, "the disk is full")


def test_store_folder_not_writable_still_generates(tmp_path, monkeypatch):
    """The staging folder cannot even be created (read-only store): the image is made, the status says why."""
    store = ReferenceStore(tmp_path)

    def refuse(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(store, "begin", refuse)
    calls = list(faultkit.trace_calls(limit=8))
    run = _save_run(store)
    outputs = faultkit.run_generation(run, calls)
    run.finish_save({}, None)
    _assert_generation_unharmed(outputs, calls)
    _assert_not_saved(store, run, "cannot be written")


def _mount_tiny_tmpfs(path):
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (not root); the monkeypatched tests cover the same path")


def test_really_full_disk(tmp_path):
    """A real 256 KB file system that fills up in the middle of the save."""
    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    _mount_tiny_tmpfs(mount)
    try:
        store = ReferenceStore(mount)
        faultkit.make_reference(store, "older")  # ~30 KB, fits
        before = faultkit.snapshot(store.path("older"))
        calls = list(faultkit.trace_calls(limit=8))  # ~5 MB of K/V: does not fit
        run = _save_run(store)
        outputs = faultkit.run_generation(run, calls)
        run.finish_save({}, None)
        _assert_generation_unharmed(outputs, calls)
        _assert_not_saved(store, run, "the disk is full")
        assert faultkit.snapshot(store.path("older")) == before
        assert ReferenceStore(mount).names() == ["older"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True, timeout=10)
