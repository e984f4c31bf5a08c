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


# -- sessions a graph host drives: settings first, the sampling run later, the image after that ------------------

def test_a_save_built_from_settings_is_planned_per_run_and_given_its_preview_later(tmp_path, calls):
    store = ReferenceStore(tmp_path)
    save = standalone.save_session(store, "cat")  # no seed, schedule or model yet
    patches = save.for_pass(ctx())
    outputs = faultkit.generate(patches.attn1, calls)
    assert save.for_pass(ctx(is_hr_pass=True)).empty  # a hires pass is not recorded
    status = save.finish({"seed": 1})
    assert status.state == "saved" and store.read_preview("cat") is None
    seal = standalone.identity(store, "cat")
    save.set_preview(faultkit.PNG)  # in a node graph the image is decoded after sampling
    assert store.read_preview("cat") == faultkit.PNG
    assert standalone.identity(store, "cat") == seal  # the preview is not part of what a Use reads
    used = faultkit.generate(standalone.use_patch(store, "cat", 0.5, ctx()), calls)
    assert all(torch.equal(a, b) for a, b in zip(used, outputs, strict=True))


def test_the_identity_of_a_reference_changes_when_it_is_overwritten(tmp_path, calls):
    store = ReferenceStore(tmp_path)
    _save(store, "cat", calls)
    first = standalone.identity(store, "cat")
    assert isinstance(first, str) and first == standalone.identity(store, "cat")
    _save(store, "cat", list(faultkit.trace_calls(limit=16, seed=5)), overwrite=True)
    assert standalone.identity(store, "cat") != first
    with pytest.raises(RefDropError, match="'dog' not found"):
        standalone.identity(store, "dog")


@pytest.mark.parametrize("name, kw, words", [
    ("../escape", {}, "may not contain"),
    ("cat", {"profile": "tiny"}, "unknown storage profile"),
    ("taken", {}, "'taken' already exists"),
])
def test_a_save_session_refuses_when_built_not_at_the_first_call(tmp_path, name, kw, words):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "taken")
    with pytest.raises(RefDropError, match=words):
        standalone.save_session(store, name, **kw)
    assert store.names() == ["taken"]


def test_finish_before_any_run_says_so(tmp_path):
    with standalone.save_session(ReferenceStore(tmp_path), "cat") as save:
        with pytest.raises(RefDropError, match="'cat' was not saved: no sampling run"):
            save.finish({})


def test_an_earlier_attn1_patch_keeps_running_underneath(tmp_path, calls):
    ran = []

    def earlier(q, k, v, extra_options):  # another node's patch
        ran.append(extra_options["block"])
        return host_attention(q, k, v, extra_options) * 0.5

    store = ReferenceStore(tmp_path)
    alone = faultkit.generate(earlier, calls)
    chained_ctx = standalone.context("sd15", host_attention, faultkit.percent_to_sigma, seed=1, earlier=earlier)
    with standalone.start_save(store, "cat", chained_ctx) as save:
        ran.clear()
        saved = faultkit.generate(save.patch, calls)
        save.finish({})
    assert len(ran) == len(calls)
    assert all(torch.equal(a, b) for a, b in zip(saved, alone, strict=True))  # a Save returns what was there
    ran.clear()
    used = faultkit.generate(standalone.use_patch(store, "cat", 0.5, chained_ctx), calls)
    assert len(ran) == len(calls)  # the layer's own attention is still the earlier patch's
    assert all(not torch.equal(a, b) for a, b in zip(used, alone, strict=True))


def test_docs_library_example_runs(tmp_path):
    """docs/library.md's example, as a user would paste it, runs and checks itself."""
    text = (REPO / "docs" / "library.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Use at the Save's settings == Save: True" in out.stdout and "c = 0 == plain: True" in out.stdout
