"""What a Use's loader thread moves to the device and how it computes there.

The bytes that cross to the device are the stored bytes (int8 codes stay int8, 1/4 of fp32), decoded (scaled, and
projected for a profile that keeps each layer's input) on the device; the RAM cache holds slots as stored. How
many CPU threads the loader computes with: tests/test_side_threads.py.
"""

from __future__ import annotations

import threading

import pytest
import safetensors.torch
import torch

from lib_refdrop.reference import compression
from lib_refdrop.reference.reader import RAM_CACHE
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import save, use

BASE = {"steps": 4, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


@pytest.fixture
def cache():
    RAM_CACHE.clear()
    yield RAM_CACHE
    RAM_CACHE.clear()


def _stored(store: ReferenceStore, name: str) -> dict[int, dict[str, torch.Tensor]]:
    """Slot index -> the tensors its files hold, read straight from them."""
    manifest = store.manifest(name)
    slots = {}
    for slot in manifest["slots"]:
        tensors = {}
        for entry in slot["files"]:
            data = (store.path(name) / entry["file"]).read_bytes()
            if entry.get("encoding") == compression.ZSTD:
                data = compression.decompress_entry(name, entry, data, 1 << 30)
            tensors.update(safetensors.torch.load(data))
        slots[int(slot["index"])] = tensors
    return slots


def _same_tensors(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(
        got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)


def _moved_by_the_loader(monkeypatch) -> list[dict]:
    """Every tensor the loader thread moves to a device (``Tensor.to`` with a device), as it was before the move."""
    moved = []
    real = torch.Tensor.to

    def to(self, *args, **kwargs):
        device = kwargs.get("device", next((a for a in args if isinstance(a, (torch.device, str))), None))
        if device is not None and threading.current_thread().name.startswith("refdrop-loader"):
            moved.append(self.clone())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return moved


@pytest.mark.parametrize("profile", ["balanced", "lean"])
def test_a_use_copies_the_stored_bytes_to_the_device(host, tmp_path, cache, monkeypatch, profile):
    store = ReferenceStore(tmp_path)
    save(host, store, "r", profile=profile, **BASE)
    moved = _moved_by_the_loader(monkeypatch)
    use(host, store, "r", 0.5, **BASE)
    cache.clear()
    use(host, store, "r", 0.5, **BASE)  # from disk
    stored = [t for slot in _stored(store, "r").values() for t in slot.values()]
    assert moved, "nothing was moved to the device"
    assert {t.dtype for t in moved} == {torch.int8, torch.float32}  # the codes and their scales
    for tensor in moved:
        assert any(tensor.dtype == want.dtype and torch.equal(tensor, want) for want in stored)


def test_the_ram_cache_holds_slots_as_stored(host, tmp_path, cache):
    store = ReferenceStore(tmp_path)
    save(host, store, "r", profile="balanced", **BASE)
    cache.clear()
    use(host, store, "r", 0.5, **BASE)
    stored = _stored(store, "r")
    assert cache.used == sum(t.numel() * t.element_size() for slot in stored.values() for t in slot.values())
    identity = store.open("r").identity
    for index, want in stored.items():
        assert _same_tensors(cache.get((identity, "r", index)), want), index

