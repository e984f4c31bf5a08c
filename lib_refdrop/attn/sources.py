"""Where a Use's reference rows come from: one source per reference slot.

Every source answers, for one attn1 call and one chunk (cond/uncond) of its rows, the reference's K and V rows
``[tokens, C]`` that the chunk's images attend to:

- ``StoredRows``: a saved reference, read from the store (``reference/reader.py`` does the reading);
- ``PassRows``: an image evaluated in a reference pass just before this U-Net call (``refpass.py``);
- ``BatchRows``: the first image of the batch, taken from this very call; the first batch keeps it for the
  batches after it (``KeptRows``), so every image of the generation attends to the same image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch

from ..errors import RefDropError, RefDropInternalError
from ..reference.address import chunk_names
from ..reference.sigmas import SigmaMap, Slot

if TYPE_CHECKING:  # the reader is handed in by run.py; attn never touches the disk itself
    from ..reference.reader import ReferenceReader


@dataclass
class LayerCall:
    """One attn1 call as the sources see it."""

    lid: str
    sigma: float
    chunks: list[str]          # chunk names in row order (``address.chunk_names``)
    occurrences: list[int]     # per chunk: the how-manieth evaluation of this layer at this sigma
    rows: int                  # rows (images) per chunk
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


class Source(Protocol):
    name: str                  # for messages: the reference's name, or what it is
    own_rows: tuple[int, ...]  # rows of each chunk that are the reference image itself

    def check_layer(self, lid: str, width: int) -> None: ...

    def guides(self, chunk: str) -> bool: ...  # whether the rows of this chunk attend to the reference at all

    def rows(self, call: LayerCall, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class _GuidesEveryChunk:
    def guides(self, chunk: str) -> bool:
        return True


class LinearKV(NamedTuple):
    """A U-Net attn1 layer's K and V projections of its input: its own ``to_k`` and ``to_v`` modules."""

    to_k: Callable
    to_v: Callable

    def __call__(self, x: torch.Tensor, positions: torch.Tensor | None = None):
        return self.to_k(x), self.to_v(x)


# Layer id -> that layer's K and V of a stored input row in this model: ``project(x, positions) -> (k, v)``, ``x``
# [tokens, C], ``positions`` the slot's RoPE rotations of those tokens where the layer ropes its keys (a DiT block:
# dit/layers.py ``projections_of``), else None (a U-Net's attn1: ``LinearKV``)
Projections = Callable[[str], Callable]


class StoredRows:
    """A saved reference. A profile that keeps each layer's input needs the model's projections, with which the
    reader turns each saved slot into K and V as it loads it (``reference/reader.py``)."""

    own_rows = ()  # rows of a chunk that are the reference itself (keep their own attention)

    def __init__(self, reader: ReferenceReader):
        self.reader = reader
        self.name = reader.name
        if reader.profile.kept.projected and reader.projections is None:
            raise RefDropError(f"RefDrop: reference '{reader.name}' keeps each layer's input and needs the model's "
                               "own projections to use it, which this caller does not give")

    def check_layer(self, lid: str, width: int) -> None:
        self.reader.check_layer(lid, width)

    def guides(self, chunk: str) -> bool:
        return self.reader.profile.guides_chunk(chunk)  # a profile may leave uncond out and keep it plain

    def rows(self, call: LayerCall, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reader.rows(call.lid, call.chunks[i], call.sigma, call.occurrences[i], call.q)


class PassRows(_GuidesEveryChunk):
    """The K and V a reference pass recorded in every attn1 layer, for the U-Net call that follows it.

    An image's pass is one cond row, conditioned on the image's own prompt, and every chunk attends to it; a stored
    trajectory's pass has a row per saved chunk, and each chunk attends to its own (else to the first)."""

    own_rows = ()

    def __init__(self, name: str):
        self.name = name
        self._rows: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def check_layer(self, lid: str, width: int) -> None:
        pass  # recorded by the same model a moment ago

    def record(self, lid: str, k: torch.Tensor, v: torch.Tensor, chunks: list[str] = ("cond0",)) -> None:
        rows = k.shape[0] // len(chunks)
        self._rows[lid] = {chunk: (k[i * rows], v[i * rows]) for i, chunk in enumerate(chunks)}

    def rows(self, call: LayerCall, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            by_chunk = self._rows[call.lid]
        except KeyError:
            raise RefDropInternalError(
                f"RefDrop: the reference pass of {self.name} did not reach layer {call.lid}"
            ) from None
        return by_chunk.get(call.chunks[i]) or by_chunk.get("cond0") or next(iter(by_chunk.values()))


class KeptRows:
    """The first batch's first image, kept for the batches after it: K and V of every layer, chunk and evaluation.

    Copied off the device as it is recorded (``copy``: ``reference/pinned.ToHost``'s asynchronous copy on CUDA)."""

    def __init__(self, copy=None):
        self._copy = copy or (lambda t: t.detach().clone())
        self._rows: dict[tuple[str, str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._slots: dict[tuple[float, int], Slot] = {}
        self._map: SigmaMap | None = None
        self.chunks: list[str] = []

    def record(self, call: LayerCall, i: int) -> None:
        chunk, start = call.chunks[i], i * call.rows
        slot = self._slots.setdefault((call.sigma, call.occurrences[i]),
                                      Slot(len(self._slots), call.sigma, call.occurrences[i]))
        if chunk not in self.chunks:
            self.chunks.append(chunk)
        self._rows[(call.lid, chunk, slot.index)] = (self._copy(call.k[start]), self._copy(call.v[start]))
        self._map = None

    def rows(self, call: LayerCall, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._map is None:
            if not self._slots:
                raise RefDropError("RefDrop: the first image of the batch was not generated before the others")
            self._map = SigmaMap(list(self._slots.values()))
        chunk = call.chunks[i] if call.chunks[i] in self.chunks else self.chunks[0]
        slot = self._map.lookup(call.sigma, call.occurrences[i])
        k, v = self._rows[(call.lid, chunk, slot.index)]
        return (k.to(call.q.device, call.q.dtype, non_blocking=True),
                v.to(call.q.device, call.q.dtype, non_blocking=True))


class BatchRows(_GuidesEveryChunk):
    """The first image of the batch. In the first batch it is taken from the call itself (and kept when more batches
    follow); image 0 keeps its own attention, so it comes out as a plain generation."""

    name = "the first image of the batch"

    def __init__(self, kept: KeptRows, first_batch: bool, keep: bool):
        self.kept = kept
        self.first_batch = first_batch
        self.keep = keep
        self.own_rows = (0,) if first_batch else ()

    def check_layer(self, lid: str, width: int) -> None:
        pass

    def rows(self, call: LayerCall, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.first_batch:
            return self.kept.rows(call, i)
        if self.keep:
            self.kept.record(call, i)
        start = i * call.rows
        return call.k[start], call.v[start]


def layer_call(lid: str, sigma: float, cond_or_uncond, occurrences: list[int], q, k, v) -> LayerCall:
    chunks = chunk_names(cond_or_uncond)
    return LayerCall(lid=lid, sigma=sigma, chunks=chunks, occurrences=occurrences, rows=q.shape[0] // len(chunks),
                     q=q, k=k, v=v)
