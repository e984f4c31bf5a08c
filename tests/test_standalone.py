"""The library's entry point for a Save and a Use outside the WebUI (lib_refdrop/standalone.py).

Driven with the attn1 calls a real host made (recorded traces, no U-Net): problems raise at once, a finished Save
is complete on disk or raises why not, and a Save left without ``finish`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from lib_refdrop import standalone
from lib_refdrop.errors import RefDropError
from lib_refdrop.reference import writer as writer_module
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.reference.writer import pending_write
from tests.support import faultkit
from tests.support.hostsim import host_attention

REPO = Path(__file__).resolve().parents[1]


def ctx(family: str = "sd15", seed: int = 1, is_hr_pass: bool = False):
    return standalone.context(family, host_attention, faultkit.percent_to_sigma, seed=seed, is_hr_pass=is_hr_pass)


@pytest.fixture(scope="module")
def calls():
    return list(faultkit.trace_calls(limit=16))


def _save(store, name, calls, **kw):
    with standalone.start_save(store, name, ctx(), **kw) as save:
        outputs = faultkit.generate(save.patch, calls)
        status = save.finish({"seed": 1, "prompt": "a cat"}, faultkit.PNG)
    return outputs, status


def _settled(store, name: str) -> None:
    """Wait for a write of ``name`` that is ending in the background (an abort is handled by the writer thread)."""
    writer = pending_write(store, name)
    assert writer is None or writer.wait(30)


def test_a_save_is_complete_on_disk_when_finish_returns_and_a_use_reproduces_it(tmp_path, calls):
    store = ReferenceStore(tmp_path)
    plain = faultkit.generate(None, calls)
    saved, status = _save(store, "cat", calls)
    assert status.state == "saved" and status.message.startswith("RefDrop: saved reference 'cat'")
    assert all(torch.equal(a, b) for a, b in zip(saved, plain, strict=True))  # a Save does not change the image
    assert store.manifest("cat")["generation"] == {"seed": 1, "prompt": "a cat"}
    assert store.read_preview("cat") == faultkit.PNG
    used = faultkit.generate(standalone.use_patch(store, "cat", 0.5, ctx()), calls)
    assert all(torch.equal(a, b) for a, b in zip(used, saved, strict=True))  # same inputs: the Save reproduces
    other = list(faultkit.trace_calls(limit=16, seed=5))
    changed = faultkit.generate(standalone.use_patch(store, "cat", 0.5, ctx()), other)
    assert any(not torch.equal(a, b) for a, b in zip(changed, faultkit.generate(None, other), strict=True))


def test_use_patch_is_none_when_it_changes_nothing(tmp_path, calls):
    store = ReferenceStore(tmp_path)
    _save(store, "cat", calls)
    assert standalone.use_patch(store, "cat", 0.0, ctx()) is None
    assert standalone.use_patch(store, "cat", 0.5, ctx(is_hr_pass=True)) is None
    assert standalone.use_patch(store, "cat", 0.5, ctx(is_hr_pass=True), apply_hires=True) is not None


def test_an_automatic_name_is_made_from_the_seed(tmp_path, calls):
    store = ReferenceStore(tmp_path)
    with standalone.start_save(store, "", ctx(seed=42)) as save:
        faultkit.generate(save.patch, calls)
        save.finish({})
    assert save.name.startswith("ref-42-") and store.names() == [save.name]


def test_finish_raises_why_the_reference_was_not_saved(tmp_path, calls, monkeypatch):
    store = ReferenceStore(tmp_path)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(writer_module, "_write_file", full)
    with pytest.raises(RefDropError, match=r"^RefDrop: reference 'cat' was not saved: the disk is full"):
        _save(store, "cat", calls)
    assert store.names() == [] and faultkit.leftovers(tmp_path) == []


def test_finish_raises_when_no_attn1_layer_was_called(tmp_path):
    store = ReferenceStore(tmp_path)
    with standalone.start_save(store, "cat", ctx()) as save, pytest.raises(RefDropError, match="'cat' was not saved"):
        save.finish({})
    assert store.names() == []


def test_finish_gives_up_waiting_after_its_timeout(tmp_path, calls, monkeypatch):
    store = ReferenceStore(tmp_path)
    disk = threading.Event()
    real = writer_module._write_file

    def slow(path, data):
        disk.wait(30)
        real(path, data)

    monkeypatch.setattr(writer_module, "_write_file", slow)
    with standalone.start_save(store, "cat", ctx()) as save:
        faultkit.generate(save.patch, calls)
        with pytest.raises(RefDropError, match="'cat' is still being written after 0.05 s"):
            save.finish({}, timeout=0.05)
    disk.set()
    _settled(store, "cat")
    assert store.names() == ["cat"]  # the write went on, and completed


@pytest.mark.parametrize("failed", [True, False])
def test_a_save_left_without_finish_leaves_nothing(tmp_path, calls, failed):
    store = ReferenceStore(tmp_path)
    with pytest.raises(RuntimeError) if failed else contextlib.nullcontext():
        with standalone.start_save(store, "cat", ctx()) as save:
            faultkit.generate(save.patch, calls[:8])
            if failed:
                raise RuntimeError("the sampler broke")
    _settled(store, "cat")
    assert store.names() == [] and faultkit.leftovers(tmp_path) == []
    with pytest.raises(RefDropError, match="'cat' not found"):  # at once: no write of it is pending
        standalone.use_patch(store, "cat", 0.5, ctx())


@pytest.mark.parametrize("name, kw, words", [
    ("../escape", {}, "may not contain"),
    ("cat", {"profile": "tiny"}, "unknown storage profile"),
    ("taken", {}, "'taken' already exists"),
])
def test_start_save_refuses_at_once(tmp_path, name, kw, words):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "taken")
    with pytest.raises(RefDropError, match=words):
        standalone.start_save(store, name, ctx(), **kw)
    assert list(tmp_path.parent.glob("escape*")) == [] and store.names() == ["taken"]


def test_start_save_refuses_a_hires_pass(tmp_path):
    with pytest.raises(RefDropError, match="first sampling pass"):
        standalone.start_save(ReferenceStore(tmp_path), "cat", ctx(is_hr_pass=True))


@pytest.mark.parametrize("name, family, kw, words", [
    ("dog", "sd15", {}, r"'dog' not found .*saved references: cat"),
    ("cat", "sdxl", {}, "SDXL"),
    ("cat", "sd15", {"step_start": 0.9, "step_end": 0.1}, "step window is empty"),
    ("cat", "sd15", {"mode": "Save"}, "use_patch sets mode itself"),
])
def test_use_patch_refuses_at_once(tmp_path, name, family, kw, words):
    """Not as a patch that fails at the first call (the WebUI's way): the caller gets the error from use_patch."""
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "cat")
    with pytest.raises(RefDropError, match=words):
        standalone.use_patch(store, name, 0.5, ctx(family), **kw)


def test_the_entry_point_imports_no_host_ui_or_test_code():
    code = ("import sys, lib_refdrop.standalone; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'modules', 'gradio', 'fastapi', 'tests', "
            "'backend', 'ldm_patched', 'hostsim', 'fakehost', 'faultkit'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"
