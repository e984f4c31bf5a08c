"""A reference kept as its latent trajectory: the smallest a reference can be, paid for with one more U-Net call.

A Save with a trajectory profile keeps, instead of any layer's rows, the first image's model input at each sampled
sigma (``LATENT``, ``[C, h, w]``) and its conditioning rows per chunk (the ``c_crossattn`` and, on SDXL, ``y`` it
was sampled with). A Use then evaluates the reference again before each of its U-Net calls, exactly as an image
reference's pass does (``refpass.py``), from the stored latent at that sigma (log-sigma interpolation between the
two saved around it) and the stored conditioning: the attn1 calls of that pass give the rows the generation
attends to. At the Save's own settings the pass is the very evaluation the Save made.

Both sides go through the hosts' model function wrapper convention (``refpass.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import RefDropError
from ..reference.address import CONDITIONING_KEYS, UNCOND, chunk_names, conditioning_key, stored_chunks
from .refpass import Evaluations

if TYPE_CHECKING:  # what a Save records into; attn itself never touches the disk
    from ..reference.recorder import Recorder

def first_image_conditioning(c: dict, cond_or_uncond, rows: int) -> dict[str, torch.Tensor]:
    """The first image's row of each conditioning tensor of one U-Net call, by ``conditioning_key``."""
    if "c_concat" in c:
        raise RefDropError("RefDrop: a trajectory reference does not work with an inpainting or instruct model; "
                           "save with a profile that stores the layers' rows")
    out = {}
    per_chunk = rows // len(cond_or_uncond)
    for i, chunk in enumerate(chunk_names(cond_or_uncond)):
        for key in CONDITIONING_KEYS:
            value = c.get(key)
            if torch.is_tensor(value) and value.shape[0] == rows:
                out[conditioning_key(chunk, key)] = value[i * per_chunk]
    return out


def trajectory_save_wrapper(recorder: Recorder) -> Callable:
    """The model function wrapper of a trajectory Save: records the latent of each new evaluation
    (``refpass.Evaluations``), and the conditioning of every chunk (split cond/uncond calls bring them one call at a
    time)."""
    evaluations = Evaluations()

    def refdrop_save_trajectory(apply_model, args):
        x, timestep, c = args["input"], args["timestep"], args["c"]
        sigma = float(timestep.reshape(-1)[0])
        if evaluations.see(sigma, x[0])[1]:
            recorder.record_latent(sigma, x[0])
        recorder.record_conditioning(first_image_conditioning(c, args["cond_or_uncond"], x.shape[0]))
        return apply_model(x, timestep, **c)

    return refdrop_save_trajectory


class TrajectoryReader(Protocol):
    """What a Use of a trajectory needs from the reader (``reference/reader.py``)."""

    name: str
    manifest: dict

    def latent(self, sigma: float, occurrence: int, like: torch.Tensor) -> torch.Tensor: ...

    def conditioning(self, like: torch.Tensor, model_kwargs: dict) -> dict[str, torch.Tensor]: ...


class TrajectoryInput:
    """A stored trajectory as the input of a reference pass (``refpass.reference_pass_wrapper``): one row per saved
    chunk, conditioned as the Save's image was."""

    per_evaluation = True  # the Save kept a latent per evaluation (``refpass.Evaluations``)

    def __init__(self, name: str, reader: TrajectoryReader):
        self.name = name
        self.reader = reader
        self._visits: dict[float, int] = {}
        self._conditioning: dict | None = None  # read once: the same at every sigma

    def inputs(self, sigma: torch.Tensor, like: torch.Tensor, model_kwargs: dict):
        """``(x, conditioning keyword arguments, cond_or_uncond)`` of the pass at ``sigma``; ``like`` and
        ``model_kwargs`` are the generation's model input and keyword arguments, which the stored ones must fit."""
        s = float(sigma.reshape(-1)[0])
        occurrence = self._visits.get(s, 0)
        self._visits[s] = occurrence + 1
        latent = self.reader.latent(s, occurrence, like)
        kwargs, cond_or_uncond = self._stored_conditioning(like, model_kwargs)
        x = latent.unsqueeze(0).expand(len(cond_or_uncond), *latent.shape).to(like.device, like.dtype)
        return x, kwargs, cond_or_uncond

    def _stored_conditioning(self, like: torch.Tensor, model_kwargs: dict):
        if self._conditioning is None:
            stored = self.reader.conditioning(like, model_kwargs)
            chunks = stored_chunks(self.reader.manifest["chunks"], stored)
            if not chunks:
                raise RefDropError(f"RefDrop: reference '{self.reader.name}' is corrupt: its conditioning is missing")
            keys = [key for key in CONDITIONING_KEYS if all(conditioning_key(c, key) in stored for c in chunks)]
            kwargs = {key: _batched([stored[conditioning_key(c, key)] for c in chunks]) for key in keys}
            self._conditioning = (kwargs, [UNCOND if c.startswith("uncond") else 1 - UNCOND for c in chunks])
        return self._conditioning


def _batched(rows: list[torch.Tensor]) -> torch.Tensor:
    """One batch of the chunks' rows; text conditionings of different token counts (a long prompt beside a short
    one) are repeated to their least common multiple, as the hosts batch them (attention over a repeated sequence
    is the same)."""
    if rows[0].dim() == 2 and len({row.shape[0] for row in rows}) > 1:
        tokens = math.lcm(*(row.shape[0] for row in rows))
        rows = [row.repeat(tokens // row.shape[0], 1) for row in rows]
    return torch.stack(rows)
