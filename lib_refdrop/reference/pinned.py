"""Device <-> host copies that never block the sampling thread.

Pinned (page-locked) host memory is what makes CUDA copies asynchronous, but allocating it is slow (one
allocation per tensor made Save 11x slower when measured), so tensors are packed into large pinned slabs
that are allocated once and recycled. On a CPU device there is nothing to overlap and a plain copy is used.
Host -> device copies move tensors as they are stored (int8 codes stay int8): decoding them is device work.
"""

from __future__ import annotations

import threading

import torch

SLAB_BYTES = 64 * 1024 * 1024
_ALIGN = 512


class PinnedSlabPool:
    """Recycled pinned byte buffers of at least ``SLAB_BYTES`` each."""

    def __init__(self):
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, min_bytes: int) -> torch.Tensor:
        with self._lock:
            for i, slab in enumerate(self._free):
                if slab.numel() >= min_bytes:
                    return self._free.pop(i)
        size = max(SLAB_BYTES, min_bytes)
        return torch.empty(size, dtype=torch.uint8, pin_memory=True)

    def give_back(self, slabs: list[torch.Tensor]) -> None:
        with self._lock:
            self._free.extend(slabs)


class Arena:
    """Bump allocation of tensors inside slabs of a pool; all of it is returned at once by ``release``."""

    def __init__(self, pool: PinnedSlabPool):
        self._pool = pool
        self._slabs: list[torch.Tensor] = []
        self._offset = 0

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if not self._slabs or self._offset + nbytes > self._slabs[-1].numel():
            self._slabs.append(self._pool.take(nbytes))
            self._offset = 0
        view = self._slabs[-1][self._offset:self._offset + nbytes]
        self._offset += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        return view.view(dtype).view(shape)

    def release(self) -> None:
        self._pool.give_back(self._slabs)
        self._slabs = []


class ToDevice:
    """Copies host tensors to ``device`` as they are (dtype and bytes unchanged) and runs device work on them, off
    the sampling thread's stream: on CUDA through recycled pinned slabs on a side stream of its own."""

    def __init__(self, device: torch.device, pool: PinnedSlabPool | None = None):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._stream = torch.cuda.Stream(device)
            self._pool = pool or PinnedSlabPool()

    def run(self, tensors: dict[str, torch.Tensor], work):
        """``(work(copies), event)``: ``work`` gets ``tensors`` on the device and queues its own device work after
        the copies; a consumer's stream waits for ``event`` before it uses the result (``None`` on a CPU). The
        calling thread waits for the copies and the work, after which the pinned slabs are reused."""
        if not self.cuda:
            return work(self.copy(tensors)), None
        arena = Arena(self._pool)
        try:
            with torch.cuda.stream(self._stream):
                out = work(self.copy(tensors, arena))
            event = torch.cuda.Event()
            event.record(self._stream)
            return out, event
        finally:
            self._stream.synchronize()  # the copies have read the pinned slabs (also when ``work`` raised)
            arena.release()

    def copy(self, tensors: dict[str, torch.Tensor], arena: Arena | None = None) -> dict[str, torch.Tensor]:
        if not self.cuda:
            return {key: tensor.to(self.device) for key, tensor in tensors.items()}
        out = {}
        for key, tensor in tensors.items():
            staged = arena.empty(tensor.shape, tensor.dtype)
            staged.copy_(tensor)
            out[key] = staged.to(self.device, non_blocking=True)
        return out


class ToHost:
    """Copies device tensors to host memory; ``fence()`` returns a callable that waits for the copies."""

    def __init__(self, device: torch.device, pool: PinnedSlabPool | None = None):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._stream = torch.cuda.Stream(device)
            self._pool = pool or PinnedSlabPool()

    def new_arena(self) -> Arena | None:
        return Arena(self._pool) if self.cuda else None

    def copy(self, tensor: torch.Tensor, arena: Arena | None) -> torch.Tensor:
        if not self.cuda:
            return tensor.detach().clone()
        dst = arena.empty(tensor.shape, tensor.dtype)
        self._stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(self._stream):
            dst.copy_(tensor.detach(), non_blocking=True)
        tensor.record_stream(self._stream)  # keep the source alive until the copy has run
        return dst

    def fence(self):
        if not self.cuda:
            return lambda: None
        event = torch.cuda.Event()
        event.record(self._stream)
        return event.synchronize
