"""Save: collects the attn1 K/V of a generation, one model evaluation ("slot") at a time.

Only the first image of a batch is recorded (the reference is one image); every chunk (uncond, cond and each
AND sub-prompt) is kept apart so that Use can pair cond with cond and uncond with uncond.
A slot is handed to the background writer as soon as the sampler moves on to the next one.
"""

from __future__ import annotations

import torch

from .address import (
    LATENT,
    POSITIONS,
    TRAJECTORY_LAYER,
    OccurrenceCounter,
    chunk_names,
    current_sigma,
    layer_id,
    rows_per_chunk,
)
from .manifest import Recording
from .pinned import ToHost
from .profiles import Profile
from .sigmas import Slot
from .writer import ReferenceWriter


class _OpenSlot:
    def __init__(self, slot: Slot, arena):
        self.slot = slot
        self.arena = arena
        self.tensors: dict[str, torch.Tensor] = {}


class Recorder:
    def __init__(self, writer: ReferenceWriter, profile: Profile):
        self.writer = writer
        self.profile = profile
        self.layers: dict[str, dict] = {}
        self.chunks: list[str] = []
        self.dtype: str | None = None
        self._counter = OccurrenceCounter()
        self._slots: dict[tuple[float, int], Slot] = {}
        self._slot_chunks: dict[int, list[str]] = {}  # slot index -> the chunks whose rows it holds
        self._sigma_ordinals: dict[float, int] = {}
        self._open: dict[int, _OpenSlot] = {}
        self._parts: dict[int, int] = {}
        self._to_host: ToHost | None = None
        self._latent_slot: _OpenSlot | None = None  # a trajectory's slot of the current sigma
        self._conditioning_kept: set[str] = set()  # a trajectory's conditioning keys, each kept in one slot

    def record(self, tensors: dict[str, torch.Tensor], extra_options: dict,
               positions: torch.Tensor | None = None) -> None:
        """Keep the first image's rows of one attn1 call: ``tensors`` are the profile's (``Profile.tensors``: K and V,
        or the layer's input x), each ``[rows, tokens, C]``. ``positions``: a DiT block's RoPE rotations of those
        tokens, kept once in each slot file that holds such rows (``address.POSITIONS``)."""
        first = next(iter(tensors.values()))
        lid = self.note_layer(first, extra_options)
        sigma = current_sigma(extra_options)
        names = chunk_names(extra_options["cond_or_uncond"])
        rows = rows_per_chunk(first.shape[0], extra_options["cond_or_uncond"])
        if not self._keeps(sigma):
            return
        for i, chunk in enumerate(names):
            if not self.profile.keeps_chunk(chunk):
                continue
            slot = self._slot(sigma, self._counter.next(lid, chunk, sigma))
            open_slot = self._open_slot(slot)
            held = self._slot_chunks.setdefault(slot.index, [])
            if chunk not in held:  # a host may evaluate cond alone at some sigmas and cond + uncond at others
                held.append(chunk)
            if chunk not in self.chunks:  # a chunk seen only at sigmas the profile does not keep is not saved
                self.chunks.append(chunk)
            for tensor_name, tensor in tensors.items():
                for key, stored in self.profile.encode_row(lid, chunk, tensor_name, tensor[i * rows]).items():
                    open_slot.tensors[key] = self._to_host.copy(stored, open_slot.arena)
            if positions is not None and POSITIONS not in open_slot.tensors:
                open_slot.tensors[POSITIONS] = self._to_host.copy(positions.float().contiguous(), open_slot.arena)

    def note_layer(self, k: torch.Tensor, extra_options: dict) -> str:
        """Remember one attn1 layer's shape (what Use checks a model against); its id. The reference's chunks are
        those a kept slot holds (``record``, ``record_conditioning``)."""
        lid = layer_id(extra_options)
        if self._to_host is None:
            self._to_host = ToHost(k.device)
        if self.dtype is None:
            self.dtype = str(k.dtype).removeprefix("torch.")
        self.layers.setdefault(lid, {
            "n_heads": int(extra_options["n_heads"]),
            "dim_head": int(extra_options["dim_head"]),
            "tokens": int(k.shape[1]),
        })
        return lid

    def record_latent(self, sigma: float, latent: torch.Tensor) -> None:
        """A trajectory profile: the first image's model input ``[C, h, w]`` at the first call of ``sigma`` (a later
        visit of the same sigma is its next occurrence)."""
        if self._to_host is None:
            self._to_host = ToHost(latent.device)
        if not self._keeps(sigma):
            self._latent_slot = None
            return
        slot = self._slot(sigma, self._counter.next(TRAJECTORY_LAYER, "", sigma))
        open_slot = self._open_slot(slot)
        open_slot.tensors[LATENT] = self._to_host.copy(latent.contiguous(), open_slot.arena)
        self._latent_slot = open_slot

    def record_conditioning(self, conditioning: dict[str, torch.Tensor]) -> None:
        """A trajectory profile: each chunk's conditioning rows (``attn/trajectory.conditioning_key``), kept once, with
        the kept slot of the first call that brings that chunk (Forge Classic evaluates its first step with the cond
        chunk alone: uncond's come with the second)."""
        open_slot = self._latent_slot
        if open_slot is None:
            return
        for key, tensor in conditioning.items():
            chunk = key.split("/")[1]
            if key in self._conditioning_kept or not self.profile.keeps_chunk(chunk):
                continue
            self._conditioning_kept.add(key)
            open_slot.tensors[key] = self._to_host.copy(tensor.contiguous(), open_slot.arena)
            if chunk not in self.chunks:
                self.chunks.append(chunk)

    def _keeps(self, sigma: float) -> bool:
        if sigma not in self._sigma_ordinals:
            self._sigma_ordinals[sigma] = len(self._sigma_ordinals)
        return self.profile.keeps_sigma(self._sigma_ordinals[sigma])

    def _slot(self, sigma: float, occurrence: int) -> Slot:
        slot = self._slots.get((sigma, occurrence))
        if slot is None:
            self.flush()  # the sampler moved on: every open slot is complete
            slot = Slot(index=len(self._slots), sigma=sigma, occurrence=occurrence)
            self._slots[(sigma, occurrence)] = slot
        return slot

    def _open_slot(self, slot: Slot) -> _OpenSlot:
        if slot.index not in self._open:
            self._open[slot.index] = _OpenSlot(slot, self._to_host.new_arena())
        return self._open[slot.index]

    def flush(self) -> None:
        for open_slot in self._open.values():
            part = self._parts.get(open_slot.slot.index, 0)
            self._parts[open_slot.slot.index] = part + 1
            release = open_slot.arena.release if open_slot.arena is not None else None
            self.writer.put_slot(open_slot.slot, part, open_slot.tensors, self._to_host.fence(), release)
        self._open = {}

    def recording(self) -> Recording:
        """What was recorded, for the manifest (after ``flush``)."""
        return Recording(layers=self.layers, chunks=list(self.chunks), dtype=self.dtype, profile=self.profile.name,
                         slots=sorted(self._slots.values(), key=lambda s: s.index),
                         slot_chunks={index: list(chunks) for index, chunks in self._slot_chunks.items()})

    @property
    def sigmas_seen(self) -> list[float]:
        """Every distinct sigma recorded at, in order, kept or not (a profile may keep every n-th)."""
        return list(self._sigma_ordinals)

    @property
    def recorded_anything(self) -> bool:
        return bool(self._slots)
