"""The first Use of a freshly saved reference: the Save hands its slots to the RAM cache (write-through, within the
cache's budget), the first slot is read as soon as the Use is planned, and whatever comes from disk is still
checked (checksum, tensor checks)."""

from __future__ import annotations

import threading

import pytest
import torch

from lib_refdrop import standalone
from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.manifest import SEAL
from lib_refdrop.reference.reader import RAM_CACHE, RamCache, ReferenceReader, WriteThrough, slots_of
from lib_refdrop.reference.sigmas import Slot
from lib_refdrop.reference.store import OpenReference, ReferenceStore
from lib_refdrop.reference.writer import ReferenceWriter
from tests.support import faultkit

CALLS = list(faultkit.trace_calls(limit=None))  # 4 sigmas, CFG
USE_CALLS = list(faultkit.trace_calls(limit=None, seed=1))  # another generation: its own q, k, v


@pytest.fixture
def cache():
    budget = RAM_CACHE.budget
    RAM_CACHE.clear()
    yield RAM_CACHE
    RAM_CACHE.set_budget(budget)
    RAM_CACHE.clear()


@pytest.fixture
def reads(monkeypatch):
    """The slot files read from disk (each read is checked against its checksum)."""
    files: list[str] = []
    real = OpenReference.read
    monkeypatch.setattr(OpenReference, "read", lambda ref, entry: files.append(entry["file"]) or real(ref, entry))
    return files


def _save(store, name: str, profile: str = "exact") -> list:
    with standalone.start_save(store, name, faultkit.pass_context(), profile=profile, overwrite=True) as save:
        outputs = faultkit.generate(save.patch, CALLS)
        save.finish({}, timeout=30)
    return outputs


def _use(store, name: str) -> list:
    return faultkit.use_generation(store, name, 0.7, USE_CALLS)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _files(manifest: dict, indices) -> list[str]:
    return sorted(e["file"] for s in manifest["slots"] if s["index"] in indices for e in s["files"])


@pytest.mark.parametrize("profile", ["exact", "balanced", "compact"])
def test_a_use_right_after_its_save_reads_no_file_and_equals_a_use_from_disk(tmp_path, cache, reads, profile):
    store = ReferenceStore(tmp_path)
    _save(store, "r", profile)
    first = _use(store, "r")
    assert reads == []
    cache.clear()
    from_disk = _use(store, "r")
    assert sorted(reads) == _files(store.manifest("r"), range(len(store.manifest("r")["slots"])))
    assert _same(first, from_disk)  # the cache holds bit for bit what a read from disk decodes
    assert not _same(first, faultkit.generate(None, USE_CALLS))  # and the reference did act


def test_write_through_keeps_the_first_slots_that_fit_the_budget(tmp_path, cache, reads):
    store = ReferenceStore(tmp_path)
    faultkit.make_reference(store, "probe")
    slot_bytes = cache.used // len(faultkit.SIGMAS)  # faultkit's slots are all alike
    cache.clear()
    cache.set_budget(int(slot_bytes * 2.5))
    manifest = faultkit.make_reference(store, "r")  # two files per slot, like a split cond/uncond pass
    assert cache.used == 2 * slot_bytes
    reader = ReferenceReader(store.open("r"), prefetch_first=False)
    for slot in slots_of(manifest):
        expected = faultkit.slot_tensors(0, slot.index)
        assert all(torch.equal(reader.stored_tensors(slot.index)[k], t) for k, t in expected.items())
    assert sorted(reads) == _files(manifest, {2, 3, 4})  # the first two came from the Save
    assert cache.used <= cache.budget


def test_a_zero_budget_keeps_nothing_and_the_use_reads_every_file(tmp_path, cache, reads):
    cache.set_budget(0)
    store = ReferenceStore(tmp_path)
    _save(store, "r")
    assert cache.used == 0
    _use(store, "r")
    manifest = store.manifest("r")
    assert sorted(reads) == _files(manifest, range(len(manifest["slots"])))


def _write(store, name: str, slot_tensors, release_each=None) -> dict:
    """A reference written through the real writer from ``slot_tensors(index)``, one file per slot."""
    writer = ReferenceWriter(store, name, overwrite=True)
    for i, sigma in enumerate(faultkit.SIGMAS):
        tensors = slot_tensors(i)
        release = (lambda t=tensors: release_each(t)) if release_each else None
        writer.put_slot(Slot(i, sigma, 0), 0, tensors, lambda: None, release)
    writer.finish("sd15", faultkit.GENERATION, faultkit.recording(), faultkit.PNG)
    assert writer.wait(30) and writer.status.state == "saved", writer.status.message
    return store.manifest(name)


def test_kept_slots_survive_the_writer_reusing_their_buffers(tmp_path, cache, reads):
    """On CUDA the writer recycles each slot's page-locked buffers (``release``) once the file is written."""
    store = ReferenceStore(tmp_path)
    _write(store, "r", lambda i: faultkit.slot_tensors(0, i), release_each=lambda t: [x.zero_() for x in t.values()])
    reader = ReferenceReader(store.open("r"), prefetch_first=False)
    for i in range(len(faultkit.SIGMAS)):
        assert all(torch.equal(reader.stored_tensors(i)[k], t) for k, t in faultkit.slot_tensors(0, i).items())
    assert reads == []


def test_a_slot_the_tensor_checks_refuse_is_not_cached_and_the_use_says_why(tmp_path, cache, reads):
    def slot_tensors(i):
        tensors = faultkit.slot_tensors(0, i)
        if i == 3:
            tensors["middle0.0/cond0/v"][0, 0] = float("nan")
        return tensors

    store = ReferenceStore(tmp_path)
    manifest = _write(store, "r", slot_tensors)
    reader = ReferenceReader(store.open("r"), prefetch_first=False)
    for i in range(3):
        reader.stored_tensors(i)
    assert reads == []  # the slots before it were cached
    with pytest.raises(RefDropError, match="reference 'r' is corrupt: .* non-finite values"):
        reader.stored_tensors(3)
    assert reads == _files(manifest, {3})


def test_a_corrupted_file_is_still_refused(tmp_path, cache):
    store = ReferenceStore(tmp_path)
    _save(store, "r")
    cache.clear()
    path = store.path("r") / store.manifest("r")["slots"][0]["files"][0]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RefDropError, match="reference 'r' is corrupt: .* does not match its checksum"):
        _use(store, "r")


def test_a_copy_with_a_corrupted_file_is_refused_while_its_twin_is_cached(tmp_path, cache):
    """Same manifest, so the same content identity: the copy's own files are still checked when first read."""
    store = ReferenceStore(tmp_path)
    _save(store, "good")
    folder = store.path("copy")
    folder.mkdir()
    for path in store.path("good").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    path = folder / store.manifest("copy")["slots"][0]["files"][0]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert store.open("copy").identity == store.open("good").identity
    with pytest.raises(RefDropError, match="reference 'copy' is corrupt"):
        _use(store, "copy")


def test_the_first_slot_is_read_when_the_use_is_planned_and_only_once(tmp_path, cache, monkeypatch):
    store = ReferenceStore(tmp_path)
    _save(store, "r")
    cache.clear()  # from disk, so that the read takes a while
    started = threading.Event()
    indices: list[int] = []
    real = ReferenceReader._read_stored

    def watched(reader, index):
        indices.append(index)
        started.set()
        return real(reader, index)

    monkeypatch.setattr(ReferenceReader, "_read_stored", watched)
    patch = standalone.use_patch(store, "r", 0.7, faultkit.pass_context())
    assert started.wait(10), "nothing was read before the first attn1 call"
    top = max(slots_of(store.manifest("r")), key=lambda s: (s.sigma, -s.occurrence))
    assert indices[0] == top.index
    out = faultkit.generate(patch, USE_CALLS)
    assert indices.count(top.index) == 1  # the first step used what planning read
    cache.clear()
    assert _same(out, _use(store, "r"))


def _keeper_of_slot_0(store) -> WriteThrough:
    """Slot 0 of a faultkit reference kept as its writer had it: two files, split like ``start_reference`` does."""
    keeper = WriteThrough(store.cache)
    tensors = faultkit.slot_tensors(0, 0)
    keys = sorted(tensors)
    for part, chosen in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:])):
        *_, release = keeper.keeping(Slot(0, faultkit.SIGMAS[0], 0), part, {k: tensors[k] for k in chosen},
                                     lambda: None)
        release()
    return keeper


def test_a_hand_over_for_a_reference_replaced_meanwhile_caches_nothing(tmp_path):
    store = ReferenceStore(tmp_path, cache=RamCache(1 << 30))
    manifest = faultkit.make_reference(store, "r")
    store.cache.clear()
    assert _keeper_of_slot_0(store).hand_over(lambda: store.open("r"), {**manifest, SEAL: "0" * 64}) == 0
    assert store.cache.used == 0
    assert _keeper_of_slot_0(store).hand_over(lambda: store.open("r"), manifest) == store.cache.used > 0
