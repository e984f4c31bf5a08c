"""Use: reads a reference slot by slot, keeps recent slots in a byte-budgeted RAM cache, and prefetches.

Sampling walks down the sigma schedule, so while the U-Net evaluates one slot the next one is read from disk
(or the RAM cache, which holds slots as stored), checked against its checksum and the manifest, copied to the device
as stored and decoded there, on a side stream. The sampling thread only waits when the disk is slower than the
model. Each reader has its own loader thread, so a slow or stuck read of one reference (a network drive) never holds
up another.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import safetensors.torch
import torch

from ..errors import RefDropError
from . import compression
from .address import LATENT, POSITIONS, entry_name, stored_chunks
from .manifest import SEAL, slot_chunks
from .pinned import PinnedSlabPool, ToDevice
from .profiles import get_profile, split_entry
from .ramcache import DEFAULT_RAM_BUDGET, RAM_CACHE, RamCache
from .side_threads import side_thread_pool
from .sigmas import SigmaMap, Slot
from .slot_check import check_decoded, check_slot_tensors, max_file_bytes
from .store import OpenReference
from .trajectory_check import check_conditioning, check_latent_shapes

__all__ = ["DEFAULT_RAM_BUDGET", "RAM_CACHE", "RamCache", "ReferenceReader", "WriteThrough", "slots_of"]

READ_TIMEOUT_S = 300.0  # one slot; a local disk needs well under a second, a stalled network drive forever


def slots_of(manifest: dict, chunk: str | None = None) -> list[Slot]:
    """The saved evaluations of a reference; with ``chunk``, those that hold its rows."""
    return [Slot(int(s["index"]), float(s["sigma"]), int(s["occurrence"])) for s in manifest["slots"]
            if chunk is None or chunk in slot_chunks(manifest, s)]


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def loader_thread(name: str) -> ThreadPoolExecutor:
    """The one thread that reads and prepares the slots of reference ``name`` (its torch ops on one thread)."""
    return side_thread_pool(f"refdrop-loader-{name}")


class ReferenceReader:
    """The tensors of one opened reference, by slot, on the device the U-Net runs on."""

    DEVICE_SLOTS = 3  # the two slots around the current sigma and the prefetched next one

    def __init__(self, opened: OpenReference, cache: RamCache = RAM_CACHE, prefetch_first: bool = True,
                 projections=None, layer_widths=None):
        self.opened = opened
        self.name = opened.name
        self.manifest = opened.manifest
        self._checked_layers: set[str] = set()
        if layer_widths is not None:
            self._check_model_layers(layer_widths)
        self.profile = get_profile(self.manifest["profile"])
        # A profile that keeps each layer's input, with the model's projections (layer id -> ``project(x, positions)
        # -> (k, v)``, attn/sources.py): the loader projects each saved slot as it brings it to the device, so Use
        # reads K and V like any profile, interpolated between saved slots as K and V are (on a U-Net the projections
        # are linear, so that is projecting the interpolated input; a DiT block's QK-norm is not).
        self.projections = projections if self.profile.kept.projected else None
        self._row_tensors = ("k", "v") if self.projections is not None else self.profile.tensors
        self.sigma_map = SigmaMap(slots_of(self.manifest))
        # per chunk, the slots that hold its rows: where a host evaluated the cond chunk alone, uncond is
        # interpolated from the slots around that sigma that have it
        self._chunk_maps = {chunk: SigmaMap(slots_of(self.manifest, chunk)) for chunk in self.manifest["chunks"]}
        self._entries = {int(s["index"]): s["files"] for s in self.manifest["slots"]}
        self._cache = cache
        self._on_device: OrderedDict[int, dict] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._to_device: ToDevice | None = None  # made by the first load (on CUDA: its side stream)
        self._pinned = PinnedSlabPool()  # page-locked RAM for one slot at a time, freed with the reader (like Save's)
        self._latent_shape: tuple | None = None  # a trajectory's, once every slot's is checked
        self._loader = loader_thread(self.name)
        self._early: dict[int, Future] = {}  # host-side reads started when the Use was planned
        if prefetch_first:
            self._start_first_slot()

    def _start_first_slot(self) -> None:
        """Start reading the slot a sampler evaluates first (the highest sigma) as soon as the Use is planned, before
        sampling starts, so that the first step waits for no read, checksum or decoding (the RAM cache may hold it
        already: then this costs a lookup)."""
        first = self.sigma_map.lookup(math.inf)
        self._early[first.index] = self._loader.submit(self._read_stored, first.index)

    def verify(self) -> None:
        """Read and check every slot now, on the loader thread (checksums, tensors against the manifest; kept in the
        RAM cache as a Use's reads are): RefDropError names what is broken before a Use relies on these rows."""
        futures = [self._loader.submit(self._read_stored, index) for index in sorted(self._entries)]
        for future in futures:
            future.result(timeout=READ_TIMEOUT_S)

    def close(self) -> None:
        """Stop loading and close the reference's files (the end of the generation): where open files cannot be
        moved (Windows), the reference can then be renamed, deleted or overwritten again. A reader that is simply
        dropped closes them too (``OpenReference`` and the executor clean up after themselves); this is not done
        from a finalizer, which could run inside another executor's submit and deadlock on its lock."""
        if self._loader is None:
            return
        for future in [*self._pending.values(), *self._early.values()]:
            future.cancel()
        self._pending.clear()
        self._early.clear()
        self._loader.submit(self.opened.close)  # after a read still in flight, on the same thread
        self._loader.shutdown(wait=False)
        self._loader = None

    def _check_model_layers(self, layer_widths) -> None:
        """Before any slot is read: every layer of the manifest is one the current model has, as wide
        (``layer_widths``: layer id -> width, None where the model has no such layer). What a slot file may
        decompress to is bounded by these layers, so a manifest cannot claim room the model never needs. A refused
        reference's files are closed."""
        try:
            for lid in self.manifest["layers"]:
                width = layer_widths(lid)
                if width is None:
                    raise RefDropError(
                        f"RefDrop: reference '{self.name}' has layer {lid}, which the current model does not have: it "
                        "was saved with a model of another architecture (or its manifest was made by hand)"
                    )
                self.check_layer(lid, width)
        except BaseException:
            self.opened.close()
            raise

    def check_layer(self, lid: str, width: int) -> None:
        """A clear error when the current model's layer ``lid`` is not the reference's (checked once per layer)."""
        if lid in self._checked_layers:
            return
        saved = self.manifest["layers"].get(lid)
        if saved is None:
            raise RefDropError(
                f"RefDrop: reference '{self.name}' has no layer {lid}: it was saved with a model of another "
                "architecture"
            )
        saved_width = saved["n_heads"] * saved["dim_head"]
        if saved_width != width:
            raise RefDropError(
                f"RefDrop: reference '{self.name}' layer {lid} is {saved_width} wide, the current model's is "
                f"{width}: it was saved with a model of another architecture"
            )
        self._checked_layers.add(lid)

    def source_chunk(self, chunk: str) -> str:
        """The saved chunk a Use chunk attends to: itself, else the first cond (a reference saved at CFG 1 has no
        uncond; AND sub-prompts beyond the saved ones use the first)."""
        saved = self.manifest["chunks"]
        if chunk in saved:
            return chunk
        return "cond0" if "cond0" in saved else saved[0]

    def rows(self, lid: str, chunk: str, sigma: float, occurrence: int, like: torch.Tensor):
        """The reference's rows of layer ``lid`` for a Use chunk at ``sigma`` (K and V, or the layer's input:
        ``Profile.tensors``): a saved row, or the two saved rows around ``sigma`` blended linearly in log-sigma
        (``SigmaMap.blend``) among the slots that hold that chunk."""
        source = self.source_chunk(chunk)
        parts = self._chunk_maps[source].blend(sigma, occurrence)
        return tuple(self._interpolated(parts, entry_name(lid, source, kind), like) for kind in self._row_tensors)

    def latent(self, sigma: float, occurrence: int, like: torch.Tensor) -> torch.Tensor:
        """A trajectory reference (``attn/trajectory.py``): its latent at ``sigma``, saved or interpolated; ``like``
        is the generation's model input. Before the first, every slot's latent is checked against the others' and
        the model's channels (small files, read on the loader thread and kept in the RAM cache)."""
        if self._latent_shape is None:
            future = self._loader.submit(self._common_latent_shape, like.shape[1])
            self._latent_shape = future.result(timeout=READ_TIMEOUT_S)
        return self._interpolated(self.sigma_map.blend(sigma, occurrence), LATENT, like)

    def _common_latent_shape(self, channels: int) -> tuple:
        shapes = {self._files_of(index): tuple(self.stored_tensors(index)[LATENT].shape) for index in self._entries}
        return check_latent_shapes(self.name, shapes, channels)

    def conditioning(self, like: torch.Tensor, model_kwargs: dict) -> dict[str, torch.Tensor]:
        """A trajectory reference: its conditioning rows by ``attn/trajectory.conditioning_key``, checked against
        each other and the model's keyword arguments of this generation (``model_kwargs``). Each chunk's are in the
        slot of the first call that brought it (the first slot, unless the Save's first step was cond alone)."""
        stored: dict[str, torch.Tensor] = {}
        files = []
        for slot in sorted(slots_of(self.manifest), key=lambda slot: slot.index):
            found = {key: tensor for key, tensor in self.tensors(slot, like.device, like.dtype).items()
                     if key != LATENT and key not in stored}
            if found:
                stored.update(found)
                files.append(self._files_of(slot.index))
            if set(stored_chunks(self.manifest["chunks"], stored)) == set(self.manifest["chunks"]):
                break
        check_conditioning(self.name, ", ".join(files), stored, self.manifest["chunks"], model_kwargs)
        return stored

    def _files_of(self, index: int) -> str:
        return ", ".join(entry["file"] for entry in self._entries[index])

    def _interpolated(self, parts, name: str, like: torch.Tensor) -> torch.Tensor:
        (first, _), *rest = parts
        row = self.tensor(first, name, like.device, like.dtype)
        if not rest:
            return row
        (second, weight), = rest
        return torch.lerp(row, self.tensor(second, name, like.device, like.dtype), weight)

    def tensor(self, slot: Slot, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """One stored row (e.g. ``input1.0/cond0/k``) of ``slot``; a clear error if the slot lacks it."""
        tensors = self.tensors(slot, device, dtype)
        try:
            return tensors[name]
        except KeyError:
            files = ", ".join(entry["file"] for entry in self._entries[slot.index])
            raise RefDropError(
                f"RefDrop: reference '{self.name}' is corrupt: {name} is missing from {files}"
            ) from None

    def tensors(self, slot: Slot, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """All tensors of ``slot`` on ``device``; starts loading the slot that follows it."""
        ready = self._on_device.get(slot.index)
        if ready is None:
            future = self._pending.pop(slot.index, None) or self._submit(slot, device, dtype)
            ready, event = self._wait(future, slot)
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

    def _wait(self, future: Future, slot: Slot):
        try:
            return future.result(timeout=READ_TIMEOUT_S)
        except FutureTimeout:
            files = ", ".join(entry["file"] for entry in self._entries[slot.index])
            raise RefDropError(
                f"RefDrop: reading reference '{self.name}' ({files}) did not finish in {READ_TIMEOUT_S:.0f} s; "
                "the disk or network drive holding the store is not answering"
            ) from None

    def prefetch(self, slot: Slot, device: torch.device, dtype: torch.dtype) -> None:
        if slot.index not in self._pending and slot.index not in self._on_device:
            self._pending[slot.index] = self._submit(slot, device, dtype)

    def stored_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """The tensors of one slot as its files store them (int8 codes stay int8), on the CPU, from the RAM cache or
        the disk (checked against the manifest)."""
        early = self._early.pop(index, None)  # started when the Use was planned: read once, not twice
        return early.result() if early is not None else self._read_stored(index)

    def _cache_key(self, index: int) -> tuple:
        """The content identity first (``RamCache.forget``), then the name: a copy of a reference under another
        name has the same identity but files of its own, which are checked when they are first read."""
        return self.opened.identity, self.name, index

    def _read_stored(self, index: int) -> dict[str, torch.Tensor]:
        cached = self._cache.get(self._cache_key(index))
        if cached is not None:
            return cached
        files = ((entry["file"], self._load_file(entry)) for entry in self._entries[index])  # one file at a time
        stored = self._checked(files)
        self._cache.put(self._cache_key(index), stored, tensor_bytes(stored))
        return stored

    def adopt(self, index: int, files: list[dict[str, torch.Tensor]], room: int) -> int:
        """Put slot ``index`` into the RAM cache from the tensors its files were serialised from (``files``, in the
        manifest's order), as this process's writer hands them over: checked exactly like a read from disk,
        without reading back and hashing what was just written. Kept only if it takes at most ``room`` bytes;
        returns the bytes it takes in the cache (0: not kept)."""
        entries = self._entries[index]
        if len(files) != len(entries) or any(tensors is None for tensors in files):
            return 0
        stored = self._checked(zip([entry["file"] for entry in entries], files, strict=True))
        nbytes = tensor_bytes(stored)
        if nbytes > room:
            return 0
        self._cache.put(self._cache_key(index), stored, nbytes)
        return nbytes

    def _checked(self, files) -> dict[str, torch.Tensor]:
        """One slot's stored tensors from its files' tensors, ``(file name, tensors)`` each, checked against the
        manifest."""
        stored: dict[str, torch.Tensor] = {}
        for file, tensors in files:
            check_slot_tensors(self.name, file, tensors, self.manifest, self.profile)
            stored.update(tensors)
        return stored

    def _load_file(self, entry: dict) -> dict[str, torch.Tensor]:
        data = self.opened.read(entry)  # checked against its size and checksum on disk
        if entry.get("encoding") == compression.ZSTD:  # at most what the manifest's layers can hold: no zip bomb
            data = compression.decompress_entry(self.name, entry, data, max_file_bytes(self.manifest, self.profile))
        try:
            return safetensors.torch.load(data)
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: a damaged or hand-made file
            raise RefDropError(
                f"RefDrop: reference '{self.name}' is corrupt: {entry['file']} is not a valid safetensors file "
                f"({exc})"
            ) from None

    def _submit(self, slot: Slot, device: torch.device, dtype: torch.dtype) -> Future:
        if self._loader is None:
            raise RuntimeError(f"RefDrop: the reader of '{self.name}' was used after its generation ended")
        return self._loader.submit(self._load, slot.index, device, dtype)

    def _load(self, index: int, device: torch.device, dtype: torch.dtype):
        """On the loader thread: slot ``index`` as the U-Net uses it on ``device``, and the event its stream waits
        for (None on a CPU). What crosses to the device is what the files store; decoding is device work."""
        stored = self.stored_tensors(index)
        if self._to_device is None or self._to_device.device != device:
            self._to_device = ToDevice(device, self._pinned)
        return self._to_device.run(
            stored, lambda on_device: self._checked_rows(index, self.decoded_rows(on_device, dtype)))

    def decoded_rows(self, stored: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """One slot's rows as the U-Net uses them, on the device ``stored`` is on: decoded by the profile (int8
        codes times their scales, low-rank factors multiplied out), in ``dtype``, and each stored layer input
        ``lid/chunk/x`` projected to ``lid/chunk/k`` and ``lid/chunk/v`` by that layer's own projections (a DiT
        block's with the slot's token positions, kept in float32 as the model's RoPE computes)."""
        positions = stored.get(POSITIONS)
        try:
            rows = self.profile.decode_slot({key: value for key, value in stored.items() if key != POSITIONS})
        except KeyError as exc:  # part of a row (scales, a factor) is missing
            raise RefDropError(f"RefDrop: reference '{self.name}' is corrupt: {exc.args[0]} is missing") from None
        return self._projected({key: row.to(dtype) for key, row in rows.items()}, positions)

    def _checked_rows(self, index: int, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """On the loader thread: the rows exactly as the U-Net will see them, checked (``check_decoded``)."""
        check_decoded(self.name, [entry["file"] for entry in self._entries[index]], rows)
        return rows

    def _projected(self, tensors: dict[str, torch.Tensor], positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.projections is None:
            return tensors
        out = {}
        with torch.no_grad():
            for key, x in tensors.items():
                lid, chunk, tensor, _ = split_entry(key)
                if tensor != "x":
                    out[key] = x
                    continue
                out[entry_name(lid, chunk, "k")], out[entry_name(lid, chunk, "v")] = self.projections(lid)(x, positions)
        return out


class WriteThrough:
    """The slots of a Save, handed to the RAM cache once the reference is complete, so that the first Use of a
    freshly saved reference reads no file (and a repeated one is no faster than it).

    The writer serialises each slot file from a dict of tensors; ``keeping`` holds on to them (a copy where the
    writer reuses their buffers) while they fit the cache's byte budget, earliest slots first, since a Use needs
    those first; ``hand_over`` puts them into the cache under the finished reference's identity, through the
    reader's own tensor checks and decoding. Nothing read from the store is trusted more than before: these
    tensors never left this process, and the files were written from them byte for byte."""

    def __init__(self, cache: RamCache = RAM_CACHE):
        self._cache = cache
        self._slots: dict[int, dict[int, dict[str, torch.Tensor]]] = {}  # slot index -> part -> tensors
        self._bytes = 0
        self._full = cache.budget <= 0

    def keeping(self, slot: Slot, part: int, tensors: dict, ready, release=None):
        """The writer's arguments for one slot file, with a ``release`` that first keeps the tensors: the writer
        calls it once ``ready()`` has returned (their copies are done) and before their buffers are reused."""

        def keep_then_release():
            try:
                self._keep(slot.index, part, tensors, copy=release is not None)
            finally:
                if release:
                    release()

        return slot, part, tensors, ready, keep_then_release

    def _keep(self, index: int, part: int, tensors: dict, copy: bool) -> None:
        if self._full:
            return
        nbytes = tensor_bytes(tensors)
        if self._bytes + nbytes > self._cache.budget:
            self._full = True  # later slots are not kept either: a Use reads them from disk, as before
            self._bytes -= sum(tensor_bytes(t) for t in self._slots.pop(index, {}).values())  # whole slots only
            return
        self._slots.setdefault(index, {})[part] = {k: t.clone() for k, t in tensors.items()} if copy else tensors
        self._bytes += nbytes

    def hand_over(self, open_written, manifest: dict) -> int:
        """Put the kept slots into the cache as slots of what was just committed with ``manifest``, which
        ``open_written()`` opens (a reference by name: ``store.open``; baked rows: ``store.open_bake``); returns the
        bytes cached. Never raises: the reference is saved either way, and a Use reads what is not cached from
        disk."""
        slots, self._slots = self._slots, {}
        if not slots:
            return 0
        cached = 0
        try:
            opened = open_written()
        except Exception:  # noqa: BLE001 - deleted or replaced already: nothing to cache
            return 0
        if opened is None:
            return 0
        try:
            if opened.identity != manifest.get(SEAL):
                return 0  # another client replaced it between the commit and here
            reader = ReferenceReader(opened, self._cache, prefetch_first=False)
            for index in sorted(slots):
                parts = slots.pop(index)
                added = reader.adopt(index, [parts.get(p) for p in range(len(parts))], self._cache.budget - cached)
                if not added:
                    break
                cached += added
        except Exception:  # noqa: BLE001 - e.g. a tensor check refused a slot: a Use reads it and says why
            pass
        finally:
            opened.close()
        return cached
