"""Shared pieces of the benchmarks: timing, memory peaks, a page-cache drop, and plain / limit / Save / Use runs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import torch

from benchmarks.limit import limit_patch
from devmodel.sampling import SCHEDULE, installed, sample
from devmodel.unets import SDHost
from lib_refdrop import standalone
from lib_refdrop.diffusers import attention


class Peaks:
    """Peak resident host memory (sampled every 5 ms) and peak GPU memory while the block runs; ``own_cpu`` is the
    CPU time the sampling of it took (to leave out of the process's)."""

    def __enter__(self):
        self._process = psutil.Process()
        self.host_peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _watch(self):
        start = time.thread_time()
        while not self._stop.wait(0.005):
            self.host_peak = max(self.host_peak, self._process.memory_info().rss)
        self.own_cpu = time.thread_time() - start

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return out, time.perf_counter() - start


def drop_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the reference's file pages, so the next read comes from the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def sample_with(host, patches, **sample_args):
    """Sample with a pass's ``patches`` installed (None: plain), like a host for one generation."""
    with installed(host, patches):
        return sample(host, **sample_args)


def run_save(host, store, name, family, profile, sample_args):
    """Sample with Save on; returns (latent, seconds sampling, seconds until the reference is complete)."""
    ctx = host.context(family, SCHEDULE.percent_to_sigma, seed=1)
    with standalone.start_save(store, name, ctx, profile=profile, overwrite=True) as save:
        latent, seconds = timed(lambda: sample_with(host, save.patches, **sample_args))
        start = time.perf_counter()
        save.finish({})
    return latent, seconds, time.perf_counter() - start


def run_use(host, store, name, family, rfg, sample_args, settings=None, bake_trajectories=False):
    """Sample with Use; returns (latent, seconds), the seconds counting the planning too (opening the reference,
    which starts reading its first slot), as a host's generation does. ``bake_trajectories``: a trajectory
    reference's first Use bakes its rows and later Uses read them (lib_refdrop/bake.py), as in a host; off here by
    default, so that each Use measures a profile as it stores a reference."""

    def use():
        with standalone.start_use(store, reference=name, rfg=rfg, bake_trajectories=bake_trajectories,
                                  **(settings or {})) as session:
            patches = session.for_pass(host.context(family, SCHEDULE.percent_to_sigma, seed=1))
            return sample_with(host, patches, **sample_args)

    return timed(use)


def run_plain(host, sample_args):
    return timed(lambda: sample_with(host, None, **sample_args))


def run_limit(host, sample_args):
    return timed(lambda: sample_with(host, standalone.PassPatches(attn1=limit_patch(attention)), **sample_args))


class DeviceHost(SDHost):
    """An ``SDHost`` whose U-Net runs on another device or in another dtype than the sampler's state (fp32 on the
    CPU, devmodel/sampling.py): each call moves its inputs there and its output back."""

    def forward(self, x, timestep, context, *, pooled=None, **kwargs):
        weight = next(self.unet.parameters())
        to_unet = lambda t: t.to(weight.device, weight.dtype) if torch.is_tensor(t) else t  # noqa: E731
        out = super().forward(to_unet(x), timestep.to(weight.device) if torch.is_tensor(timestep) else timestep,
                              to_unet(context), pooled=to_unet(pooled), **kwargs)
        return out.to("cpu", torch.float32)

    __call__ = forward


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
