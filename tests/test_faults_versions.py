"""Overwrite, rename and delete while references are cached or in use: a Use sees exactly one version of a
reference (the one it opened), never the old tensors after an overwrite, and "corrupt" only for corrupt files."""

from __future__ import annotations

import pytest
import torch

from lib_refdrop import standalone
from lib_refdrop.reference import reader as reader_module
from lib_refdrop.reference.store import ReferenceStore
from tests.support import faultkit

CALLS = 16  # recorded attn1 calls of a real host: one model evaluation of an SD1.5 U-Net


def _calls(seed: int):
    return list(faultkit.trace_calls(limit=CALLS, seed=seed))


def _save(store, name: str, seed: int, overwrite: bool = False) -> None:
    faultkit.save_generation(store, name, _calls(seed), overwrite=overwrite)


def _use(store, name: str) -> list[torch.Tensor]:
    return faultkit.use_generation(store, name, 1.0, _calls(99))


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def cache():
    reader_module.RAM_CACHE.clear()
    yield reader_module.RAM_CACHE
    reader_module.RAM_CACHE.clear()


def test_an_overwrite_within_the_same_second_is_never_answered_from_the_cache(tmp_path, cache):
    store = ReferenceStore(tmp_path)
    _save(store, "r", seed=1)
    first = _use(store, "r")  # now cached
    _save(store, "r", seed=2, overwrite=True)  # same layers, same size, same second
    after = _use(store, "r")
    cache.clear()
    fresh = _use(store, "r")
    assert _same(after, fresh)
    assert not _same(after, first)


@pytest.mark.parametrize("change", ["delete", "rename", "overwrite"])
def test_a_changed_reference_leaves_nothing_in_the_cache(tmp_path, cache, change):
    store = ReferenceStore(tmp_path)
    _save(store, "r", seed=1)
    _save(store, "keep", seed=3)
    cache.clear()  # a Save fills the cache itself (reader.WriteThrough); here the Uses fill it
    _use(store, "keep")
    kept = cache.used
    _use(store, "r")
    with_r = cache.used
    assert with_r > kept
    if change == "delete":
        store.delete("r")
    elif change == "rename":
        store.rename("r", "r2")
    else:
        _save(store, "r", seed=2, overwrite=True)
    # an overwrite leaves the new version's slots, as large as the old one's (a Save fills the cache)
    assert cache.used == (with_r if change == "overwrite" else kept)


def test_a_use_that_opened_a_reference_reads_that_version_through_an_overwrite(tmp_path, cache):
    store = ReferenceStore(tmp_path)
    _save(store, "r", seed=1)
    expected_old = _use(store, "r")
    cache.clear()
    patch = standalone.use_patch(store, "r", 1.0, faultkit.pass_context())  # the generation started: "r" is open
    _save(store, "r", seed=2, overwrite=True)  # another client overwrites it meanwhile
    cache.clear()
    out = [patch(q, k, v, eo) for q, k, v, eo in _calls(99)]
    assert _same(out, expected_old)
    cache.clear()
    assert not _same(_use(store, "r"), expected_old)  # a Use that starts now gets the new version


def test_a_reference_overwritten_while_it_is_opened_is_opened_again(tmp_path, cache, monkeypatch):
    """The overwrite lands between reading the manifest and opening the files: the files then belong to the new
    manifest, so opening starts again instead of pairing new files with the old manifest."""
    store = ReferenceStore(tmp_path)
    _save(store, "r", seed=1)
    _save(store, "new", seed=2)
    expected_new = _use(store, "new")
    real_open_files = store._open_files
    raced = []

    def racing_open_files(name, manifest):
        if not raced:
            raced.append(True)
            store.delete("r")
            store.rename("new", "r")
        return real_open_files(name, manifest)

    monkeypatch.setattr(store, "_open_files", racing_open_files)
    cache.clear()
    assert _same(_use(store, "r"), expected_new) and raced


def test_the_end_of_a_generation_closes_the_reference_it_used(tmp_path, cache):
    """Use keeps the reference's files open while it runs; ``release`` (the script's postprocess) closes them, so a
    reference is not held open between generations (where open files cannot be moved, it could not be deleted)."""
    import time

    from lib_refdrop.params import build
    from lib_refdrop.run import RefDropRun

    store = ReferenceStore(tmp_path)
    _save(store, "r", seed=1)
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "r", "rfg": 1.0}), store)
    patch = faultkit.attn1_patch(run, faultkit.pass_context())
    for q, k, v, eo in _calls(99):
        patch(q, k, v, eo)
    (reader,) = run._readers
    assert not reader.opened.closed
    run.release()
    deadline = time.monotonic() + 10
    while not reader.opened.closed and time.monotonic() < deadline:
        time.sleep(0.01)  # the loader closes the files after any read still in flight
    assert reader.opened.closed
    store.delete("r")
    assert store.names() == []
