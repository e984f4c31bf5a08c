"""Use: reads a reference slot by slot, keeps recent slots in a byte-budgeted RAM cache, and prefetches.

Sampling walks down the sigma schedule, so while the U-Net evaluates one slot the next one is read from disk
(or the RAM cache), checked against its checksum, decoded and copied to the device on a side stream. The
sampling thread only waits when the disk is slower than the model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import safetensors.torch
import torch

from .keys import SigmaMap, Slot
from .profiles import get_profile
from .staging import Arena, PinnedSlabPool
from .store import ReferenceStore

DEFAULT_RAM_BUDGET = 4 * 1024**3
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _background() -> ThreadPoolExecutor:
    """One shared loader thread: disk reads are sequential anyway, and no thread outlives the process."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refdrop-loader")
        return _executor


class RamCache:
    """LRU of decoded slots, never holding more than ``budget`` bytes (a slot larger than it is not kept)."""

    def __init__(self, budget: int = DEFAULT_RAM_BUDGET):
        self.budget = int(budget)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key, value, nbytes: int) -> None:
        with self._lock:
            if key in self._items or nbytes > self.budget:
                return
            self._items[key] = (value, nbytes)
            self.used += nbytes
            self._evict()

    def set_budget(self, budget: int) -> None:
        with self._lock:
            self.budget = int(budget)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0

    def _evict(self) -> None:
        while self.used > self.budget and self._items:
            _, (_, nbytes) = self._items.popitem(last=False)
            self.used -= nbytes


RAM_CACHE = RamCache()
_PINNED_POOL = PinnedSlabPool()


def slots_of(manifest: dict) -> list[Slot]:
    return [Slot(int(s["index"]), float(s["sigma"]), int(s["occurrence"])) for s in manifest["slots"]]


class ReferenceReader:
    """The tensors of one reference, by slot, on the device the U-Net runs on."""

    DEVICE_SLOTS = 3  # the two slots around the current sigma and the prefetched next one

    def __init__(self, store: ReferenceStore, name: str, manifest: dict, cache: RamCache = RAM_CACHE):
        self.store = store
        self.name = name
        self.manifest = manifest
        self.profile = get_profile(manifest["profile"])
        self.sigma_map = SigmaMap(slots_of(manifest))
        self._entries = {int(s["index"]): s["files"] for s in manifest["slots"]}
        self._cache = cache
        self._cache_key = (str(store.path(name)), manifest.get("created"), manifest.get("bytes"))
        self._on_device: OrderedDict[int, dict] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._stream = None  # the side stream for host -> device copies (CUDA only)

    def tensors(self, slot: Slot, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """All tensors of ``slot`` on ``device``; starts loading the slot that follows it."""
        ready = self._on_device.get(slot.index)
        if ready is None:
            future = self._pending.pop(slot.index, None) or self._submit(slot, device, dtype)
            ready, event = future.result()
            if event is not None:
                stream = torch.cuda.current_stream(device)
                stream.wait_event(event)
                for tensor in ready.values():  # made on the loader's stream, used (and freed) on this one
                    tensor.record_stream(stream)
            self._on_device[slot.index] = ready
            while len(self._on_device) > self.DEVICE_SLOTS:
                self._on_device.popitem(last=False)
            following = self.sigma_map.following(slot)
            if following is not None and following.index not in self._on_device:
                self.prefetch(following, device, dtype)
        return ready

    def prefetch(self, slot: Slot, device: torch.device, dtype: torch.dtype) -> None:
        if slot.index not in self._pending and slot.index not in self._on_device:
            self._pending[slot.index] = self._submit(slot, device, dtype)

    def host_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """Decoded CPU tensors of one slot, from the RAM cache or the disk (checked against the manifest)."""
        key = (*self._cache_key, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        stored: dict[str, torch.Tensor] = {}
        for entry in self._entries[index]:
            stored.update(safetensors.torch.load(self.store.read_file(self.name, entry)))
        decoded = self._decode(stored)
        self._cache.put(key, decoded, sum(t.numel() * t.element_size() for t in decoded.values()))
        return decoded

    def _decode(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in stored.items():
            base, _, tail = key.rpartition("/")
            tensor_name, _, suffix = tail.partition(".")
            grouped.setdefault(f"{base}/{tensor_name}", {})[f".{suffix}" if suffix else ""] = tensor
        return {name: self.profile.decode(parts) for name, parts in grouped.items()}

    def _submit(self, slot: Slot, device: torch.device, dtype: torch.dtype) -> Future:
        return _background().submit(self._load, slot.index, device, dtype)

    def _load(self, index: int, device: torch.device, dtype: torch.dtype):
        host = self.host_tensors(index)
        if device.type != "cuda":
            return {k: t.to(device=device, dtype=dtype) for k, t in host.items()}, None
        arena = Arena(_PINNED_POOL)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        stream = self._stream
        out = {}
        with torch.cuda.stream(stream):
            for key, tensor in host.items():
                pinned = arena.empty(tensor.shape, tensor.dtype)
                pinned.copy_(tensor)
                out[key] = pinned.to(device=device, non_blocking=True).to(dtype)
        event = torch.cuda.Event()
        event.record(stream)
        event.synchronize()  # only this loader thread waits; then the pinned buffers can be reused
        arena.release()
        return out, event
