"""The loader and the writer run their torch CPU ops on one thread and leave the process's count alone.

A side thread with an OpenMP team of its own gives the process more OpenMP threads than cores; GNU OpenMP then stops
spinning in every team and the sampling thread's ops sleep at each barrier (a Use was 1.10 x the limit in a real
ComfyUI on 2 cores, docs/speed.md). Before that, a loader that took OpenMP's default (every core) spun a second
thread against a 1-thread sampler (a warm ``lean`` Use cost 1.6 x the limit's CPU time).
"""

from __future__ import annotations

import ctypes
import threading

import pytest
import torch

from lib_refdrop.reference import writer as writer_module
from lib_refdrop.reference.reader import RAM_CACHE, ReferenceReader
from lib_refdrop.reference.side_threads import side_thread_pool, start_side_thread
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import save

BASE = {"steps": 4, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
PROCESS_COUNT = 3  # unlike 1 and unlike OpenMP's default on a 2-core machine


def _openmp_max_threads():
    """``omp_get_max_threads`` of the calling thread, read without running a torch op (which would set it); where
    torch is not built with GNU OpenMP, torch's own count (the tests still check that one)."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libgomp" in line and line.rstrip().endswith(".so.1")}
    if not paths:
        return torch.get_num_threads()
    return ctypes.CDLL(sorted(paths)[0]).omp_get_max_threads()


def _counts_after_a_parallel_op():
    torch.ones(1 << 20).sum()  # torch's per-thread set-up has run by now
    return torch.get_num_threads(), _openmp_max_threads()


def _fresh_thread_count():
    found = []
    fresh = threading.Thread(target=lambda: found.append(_counts_after_a_parallel_op()))
    fresh.start()
    fresh.join()
    return found[0]


@pytest.fixture
def process_count():
    before = torch.get_num_threads()
    torch.set_num_threads(PROCESS_COUNT)
    yield PROCESS_COUNT
    torch.set_num_threads(before)


def test_a_side_thread_pool_computes_on_one_thread(process_count):
    pool = side_thread_pool("probe")
    try:
        assert pool.submit(_counts_after_a_parallel_op).result() == (1, 1)
    finally:
        pool.shutdown()
    assert torch.get_num_threads() == process_count
    assert _fresh_thread_count() == (process_count, process_count)


def test_a_started_side_thread_computes_on_one_thread(process_count):
    found = []
    start_side_thread(lambda: found.append(_counts_after_a_parallel_op()), "probe").join()
    assert found == [(1, 1)]
    assert torch.get_num_threads() == process_count
    assert _fresh_thread_count() == (process_count, process_count)


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


def test_a_use_loader_and_a_save_writer_are_side_threads(host, tmp_path, process_count, monkeypatch):
    writer_counts = []
    write_slot = writer_module.ReferenceWriter._write_slot

    def counting(self, *args, **kwargs):
        writer_counts.append(_counts_after_a_parallel_op())
        return write_slot(self, *args, **kwargs)

    monkeypatch.setattr(writer_module.ReferenceWriter, "_write_slot", counting)
    store = ReferenceStore(tmp_path)
    RAM_CACHE.clear()
    save(host, store, "r", profile="lean", **BASE)
    assert writer_counts and set(writer_counts) == {(1, 1)}
    assert torch.get_num_threads() == process_count
    reader = ReferenceReader(store.open("r"), prefetch_first=False)
    try:
        assert reader._loader.submit(_counts_after_a_parallel_op).result() == (1, 1)
    finally:
        reader.close()
        RAM_CACHE.clear()
    assert torch.get_num_threads() == process_count
