"""How a Use's loader thread computes.

The loader thread computes with the process's torch CPU thread count, like the sampling thread (with OpenMP's default,
all cores, its matrix products spun a second thread against the sampler: a warm ``lean`` Use cost 1.6x the limit's
CPU time with 1 torch thread).
"""

from __future__ import annotations

import ctypes
import threading

import pytest
import torch

from lib_refdrop.reference.reader import ReferenceReader
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import save

BASE = {"steps": 4, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


def _openmp_max_threads():
    """``omp_get_max_threads`` of the calling thread, read without running a torch op (which would set it)."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libgomp" in line and line.rstrip().endswith(".so.1")}
    if not paths:
        pytest.skip("torch is not built with GNU OpenMP here")
    return ctypes.CDLL(sorted(paths)[0]).omp_get_max_threads()


def test_the_loader_thread_computes_with_the_process_torch_thread_count(host, tmp_path):
    store = ReferenceStore(tmp_path)
    save(host, store, "r", profile="lean", **BASE)
    found = {}
    probe = threading.Thread(target=lambda: found.setdefault("default", _openmp_max_threads()))
    probe.start()
    probe.join()
    before = torch.get_num_threads()
    torch.set_num_threads(found["default"] + 1)  # unlike OpenMP's default for a new thread
    try:
        reader = ReferenceReader(store.open("r"), prefetch_first=False)
        try:
            assert reader._loader.submit(_openmp_max_threads).result() == found["default"] + 1
        finally:
            reader.close()
    finally:
        torch.set_num_threads(before)
