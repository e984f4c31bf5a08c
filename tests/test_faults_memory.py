"""Memory: a RAM budget smaller than one reference step streams from disk and never grows past the budget;
an out-of-memory error during Use stops the generation with a clear message."""

from __future__ import annotations

import pytest
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.params import build
from lib_refdrop.reference import reader as reader_module
from lib_refdrop.reference.reader import RamCache, ReferenceReader, slots_of
from lib_refdrop.reference.store import OpenReference, ReferenceStore
from lib_refdrop.run import RefDropRun
from tests.support import faultkit


class _WatchedCache(RamCache):
    def __init__(self, budget):
        super().__init__(budget)
        self.peak = 0

    def put(self, key, value, nbytes):
        super().put(key, value, nbytes)
        self.peak = max(self.peak, self.used)


def _slot_bytes(reader, index):
    return sum(t.numel() * t.element_size() for t in reader.stored_tensors(index).values())


@pytest.mark.parametrize("budget_slots", [0.5, 1.5, 3.5])
def test_ram_budget_is_never_exceeded_and_reads_stream_from_disk(tmp_path, monkeypatch, budget_slots):
    store = ReferenceStore(tmp_path)
    manifest = faultkit.make_reference(store, "r")
    slot_bytes = _slot_bytes(ReferenceReader(store.open("r"), cache=RamCache(0)), 0)
    cache = _WatchedCache(int(slot_bytes * budget_slots))
    reads = []
    real_read = OpenReference.read
    monkeypatch.setattr(OpenReference, "read", lambda ref, entry: reads.append(entry["file"]) or real_read(ref, entry))
    slots = slots_of(manifest)
    for _ in range(3):  # three generations with the same reference
        reader = ReferenceReader(store.open("r"), cache=cache)
        for slot in slots:
            got = reader.tensors(slot, torch.device("cpu"), torch.float32)
            assert torch.equal(got["middle0.0/cond0/v"], faultkit.slot_tensors(0, slot.index)["middle0.0/cond0/v"])
            assert cache.used <= cache.budget
    assert cache.peak <= cache.budget
    files_per_pass = sum(len(s["files"]) for s in manifest["slots"])
    if budget_slots < 1:
        assert cache.used == 0 and len(reads) == 3 * files_per_pass  # nothing fits: every step streams from disk
    else:
        assert len(reads) > files_per_pass  # only part fits: the rest is read again


def test_use_with_a_tiny_ram_budget_gives_the_same_image(tmp_path, monkeypatch):
    store = ReferenceStore(tmp_path)
    calls = list(faultkit.trace_calls(limit=16))
    plain = faultkit.save_generation(store, "r", calls)
    budget_before = reader_module.RAM_CACHE.budget
    reader_module.RAM_CACHE.set_budget(1024)  # far smaller than one step of this reference
    try:
        reader_module.RAM_CACHE.clear()
        out = faultkit.use_generation(store, "r", 0.7, calls)
        assert reader_module.RAM_CACHE.used == 0
    finally:
        reader_module.RAM_CACHE.set_budget(budget_before)
    assert all(torch.equal(a, b) for a, b in zip(out, plain, strict=True))


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _use_with_oom(tmp_path, monkeypatch):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "big")
    monkeypatch.setattr(ReferenceReader, "_load", _oom)
    run = RefDropRun(build({"enabled": True, "mode": "Use", "reference": "big", "rfg": 0.5}), store)
    patch = faultkit.attn1_patch(run, faultkit.pass_context())
    q = torch.randn(2, 16, 8)
    eo = {"block": ["input", 1], "block_index": 0, "n_heads": 2, "dim_head": 4, "cond_or_uncond": [1, 0],
          "sigmas": torch.tensor([14.6])}
    patch(q, q, q, eo)


def test_gpu_out_of_memory_during_use_names_the_reference_and_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(RefDropError, match=r"out of GPU memory while using reference 'big'"):
        _use_with_oom(tmp_path, monkeypatch)
