"""The threads a reference's reads and writes run on beside sampling (the loader, the writer), with torch's CPU ops
there on one thread.

A side thread that ran torch's ops with the process's thread count would start an OpenMP team of its own; with more
OpenMP threads than cores, GNU OpenMP stops spinning in every team and the sampling thread's ops sleep and wake at
each barrier: a Use was 1.07–1.10 x the limit in a real ComfyUI on 2 cores (docs/speed.md). The side threads' work is
small beside sampling, so one thread is enough."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch


def _one_torch_thread() -> None:
    torch.get_num_threads()  # torch's own set-up of this thread first: run later, it would take the process's count
    torch.set_num_threads(1)


def _give_back(count: int) -> None:
    """``torch.set_num_threads`` also sets the count any later thread takes when torch first runs there. (A thread
    that first ran torch between the two calls would take 1; the hosts run one generation at a time, and this runs
    while one is planned.)"""
    torch.set_num_threads(count)


def side_thread_pool(name: str) -> ThreadPoolExecutor:
    """One worker thread (``max_workers=1``) named ``name``, its torch ops on one thread."""
    count = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_one_torch_thread)
    pool.submit(int).result()  # the worker has started and run the initializer
    _give_back(count)
    return pool


def start_side_thread(target, name: str) -> threading.Thread:
    """A daemon thread running ``target``, its torch ops on one thread."""
    count = torch.get_num_threads()
    started = threading.Event()

    def run():
        _one_torch_thread()
        started.set()
        target()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    started.wait()
    _give_back(count)
    return thread
