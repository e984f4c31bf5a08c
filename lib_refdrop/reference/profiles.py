"""Storage profiles: what a Save keeps of each attn1 K/V, and how Use gets it back.

Bytes decide RefDrop's speed (a raw SDXL 1024² reference is ~16.8 GB of fp16 K/V), so a profile can
- store values as 8-bit codes with one fp32 scale per channel (``storage``: ``int8``, or ``fp8`` e4m3; half of
  fp16 each; per-channel int8 measured more accurate than fp8 on the same features, see README "Storage profiles"),
- keep every n-th sampled sigma (``sigma_stride``; Use interpolates between the kept ones),
- store each row as two low-rank factors (``rank_budget``: the factors take at most this share of the row's values;
  ``rank_energy``: the rank keeps this share of the squared singular values, if fewer suffice), each factor stored
  as ``storage`` says,
- compress each slot file losslessly (``file_encoding="zstd"``: the PyPI package ``zstandard``),
- leave the uncond chunk out (``chunks="cond"``; ``uncond_use`` says what Use does for uncond rows then).
``exact`` keeps K and V as computed: Use at identical settings reproduces the Save image bit for bit.
Fidelity of each profile is measured by ``python -m benchmarks.profiles`` (random weights) and
``python -m devmodel.toy.measure`` (a trained model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import RefDropError
from . import lowrank, quantize
from .address import entry_name

SCALE = "scale"  # the suffix of a quantized row's per-channel scales: ``input1.0/cond0/k.scale``
U, W = "u", "w"  # the suffixes of a low-rank row's factors: ``input1.0/cond0/k.u`` [N, r] and ``.w`` [r, C]
RANK = -1        # in a shape from ``stored_forms``: the row's rank, 1 to ``Profile.max_rank`` (the same in u and w)
STORAGES = ("native", *quantize.FORMATS)
FILE_ENCODINGS = ("raw", "zstd")


@dataclass(frozen=True)
class Kept:
    """What a profile keeps of a generation (``Profile.keep``), and what that asks of a Save and of a Use; the
    one place that tells the three apart."""

    name: str
    tensors: tuple[str, ...]  # the stored tensors of each layer and chunk; () keeps no layer rows
    recorded_by: str          # the Save's hook: "attn1" (the replace patch), "attn1_patch" (before the projections;
    #                           a DiT block calls it itself) or "model_function" (the wrapper around the model)
    nothing_recorded: str     # why a Save recorded nothing, when this hook did not run

    @property
    def projected(self) -> bool:
        """The rows are a layer's input: Use projects them with the layer's own ``to_k``/``to_v`` (a DiT block's
        ``qkv`` or ``linear1``, QK-norm and RoPE)."""
        return self.recorded_by == "attn1_patch"

    @property
    def evaluated_again(self) -> bool:
        """Only the reference's latent at each sampled sigma and its conditioning are kept (``attn/trajectory.py``):
        Use evaluates the rows again in a reference pass."""
        return self.recorded_by == "model_function"


KEPT = {kept.name: kept for kept in (
    Kept("kv", ("k", "v"), "attn1", "no self-attention layer was called"),
    # on a DiT the image tokens' attention input, and in each slot file their positions (address.POSITIONS)
    Kept("input", ("x",), "attn1_patch",
         "no layer input was recorded (the Save's input_patch must run as an attn1_patch)"),
    Kept("trajectory", (), "model_function",
         "no latent was recorded (the Save's model function wrapper must run around the model)"),
)}


def split_entry(key: str) -> tuple[str, str, str, str]:
    """``"input1.0/cond0/k.u.scale"`` -> ``("input1.0", "cond0", "k", "u.scale")``; the inverse of the naming in
    ``Profile.encode_row`` (the suffix is "" for the values themselves)."""
    lid, _, rest = key.partition("/")
    chunk, _, tail = rest.partition("/")
    tensor, _, suffix = tail.partition(".")
    return lid, chunk, tensor, suffix


@dataclass(frozen=True)
class Profile:
    """How a Save stores each K/V row and how Use reads it back: ``encode_row`` and ``decode_slot`` are inverses
    (``exact`` bit for bit), and ``stored_forms`` says what a valid stored row looks like."""

    name: str
    storage: str = "native"      # native | int8 | fp8 (of the rows, or of their low-rank factors)
    sigma_stride: int = 1        # keep every n-th distinct sigma
    rank_budget: float = 0.0     # 0: whole rows; else low-rank factors holding at most this share of a row's values
    rank_energy: float = 0.99    # the share of squared singular values the rank keeps (when under the budget)
    file_encoding: str = "raw"   # raw | zstd (lossless, on the writer thread)
    chunks: str = "all"          # all | cond (the uncond chunk is not stored)
    uncond_use: str = "cond"     # where uncond is not stored: "cond" (attend to cond0) | "plain" (no guidance)
    keep: str = "kv"             # what a Save keeps: a name in ``KEPT``

    def __post_init__(self):
        choices = {"storage": STORAGES, "file_encoding": FILE_ENCODINGS, "chunks": ("all", "cond"),
                   "uncond_use": ("cond", "plain"), "keep": tuple(KEPT)}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"profile {self.name}: {field} must be one of {allowed}")
        if not 0.0 <= self.rank_budget < 1.0 or not 0.0 < self.rank_energy <= 1.0 or self.sigma_stride < 1:
            raise ValueError(f"profile {self.name}: rank_budget in [0, 1), rank_energy in (0, 1], sigma_stride >= 1")

    @property
    def kept(self) -> Kept:
        return KEPT[self.keep]

    @property
    def tensors(self) -> tuple[str, ...]:
        """The stored tensors of each layer and chunk: ``("k", "v")``, or ``("x",)`` (the attn1 input)."""
        return self.kept.tensors

    def keeps_sigma(self, ordinal: int) -> bool:
        """Whether the ``ordinal``-th distinct sigma of a Save is stored."""
        return ordinal % self.sigma_stride == 0

    def keeps_chunk(self, chunk: str) -> bool:
        """Whether a Save stores the rows of ``chunk`` (``cond0``, ``uncond0``...)."""
        return self.chunks == "all" or not chunk.startswith("uncond")

    def guides_chunk(self, chunk: str) -> bool:
        """Whether Use guides the rows of ``chunk`` with the reference: not where this profile left the uncond
        chunk out and says "plain" (elsewhere a missing chunk attends to cond0: ``ReferenceReader.source_chunk``)."""
        return self.keeps_chunk(chunk) or self.uncond_use == "cond"

    @property
    def low_rank(self) -> bool:
        return self.rank_budget > 0

    def max_rank(self, tokens: int, width: int) -> int:
        """The largest rank a row may be stored with: its two factors hold at most ``rank_budget`` of its values."""
        return max(1, min(int(self.rank_budget * tokens * width / (tokens + width)), tokens, width))

    def encode_row(self, lid: str, chunk: str, tensor_name: str, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored tensors of one K or V row ``[N, C]`` of one layer and chunk, by their names in a slot file."""
        name = entry_name(lid, chunk, tensor_name)
        if not self.low_rank:
            return self._encode_values(name, row, row.dtype)
        u, w = lowrank.factor(row, self.rank_energy, self.max_rank(*row.shape))
        return {**self._encode_values(f"{name}.{U}", u, row.dtype), **self._encode_values(f"{name}.{W}", w, row.dtype)}

    def _encode_values(self, name: str, values: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if self.storage == "native":
            return {name: values.to(dtype).contiguous()}
        codes, scale = quantize.encode(values, self.storage)
        return {name: codes, f"{name}.{SCALE}": scale}

    def decode_slot(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows by entry name (``input1.0/cond0/k``) from the stored tensors of one slot (a missing part of a row
        raises ``KeyError`` with its name)."""
        if self.storage == "native" and not self.low_rank:
            return dict(stored)
        rows = {split_entry(key)[:3] for key in stored}
        return {entry_name(*row): self._decode_row(stored, entry_name(*row)) for row in rows}

    def _decode_row(self, stored: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if not self.low_rank:
            return self._decode_values(stored, name)
        return lowrank.expand(self._decode_values(stored, f"{name}.{U}"), self._decode_values(stored, f"{name}.{W}"))

    def _decode_values(self, stored: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if self.storage == "native":
            return stored[name]
        return quantize.decode(stored[name], stored[f"{name}.{SCALE}"])

    def stored_forms(self, width: int, tokens: int, compute_dtype: torch.dtype) -> dict[str, tuple]:
        """Suffix -> (dtype, shape) of each stored tensor of one row of a layer ``tokens`` long, ``width`` wide;
        ``RANK`` in a shape stands for the row's rank (``max_rank`` at most)."""
        if not self.low_rank:
            return self._value_forms("", (tokens, width), compute_dtype)
        return {**self._value_forms(U, (tokens, RANK), compute_dtype),
                **self._value_forms(W, (RANK, width), compute_dtype)}

    def _value_forms(self, suffix: str, shape: tuple, compute_dtype: torch.dtype) -> dict[str, tuple]:
        if self.storage == "native":
            return {suffix: (compute_dtype, shape)}
        scale = f"{suffix}.{SCALE}" if suffix else SCALE
        return {suffix: (quantize.FORMATS[self.storage][0], shape), scale: (torch.float32, (shape[1],))}

    def row_bytes_bound(self, tokens: int, width: int, itemsize: int = 2) -> int:
        """The most bytes one stored row takes (before ``file_encoding``), at ``itemsize`` bytes per computed value."""
        rank = self.max_rank(tokens, width)
        total = 0
        for dtype, shape in self.stored_forms(width, tokens, torch.float16).values():
            size = itemsize if dtype == torch.float16 else torch.empty((), dtype=dtype).element_size()
            numel = 1
            for dim in shape:
                numel *= rank if dim == RANK else dim
            total += numel * size
        return total


EXACT = Profile("exact")                                               # K and V as computed: bit-exact Use
BALANCED = Profile("balanced", storage="int8")                         # 1/2 of raw fp16
COMPACT = Profile("compact", storage="int8", sigma_stride=5)           # 1/10 of raw fp16

# Formats a reference can have been saved in before Saves took only the offered profiles (``PROFILES``): each
# technique alone and combinations of them, which a user could type into the panel. Read, never written again, and
# never extended; ``benchmarks/candidates.py`` measures them (docs/profiles.md).
READ_ONLY: dict[str, Profile] = {p.name: p for p in (
    Profile("fp8", storage="fp8"),                                                          # 1/2
    Profile("zstd", file_encoding="zstd"),                                                  # lossless
    Profile("cond-only", chunks="cond"),                                                    # 1/2
    Profile("cond-only-plain", chunks="cond", uncond_use="plain"),                          # 1/2
    Profile("stride2", sigma_stride=2),                                                     # 1/2
    Profile("lowrank-half", rank_budget=0.5),                                               # <= 1/2
    Profile("lowrank-quarter", rank_budget=0.25),                                           # <= 1/4
    Profile("int8-zstd", storage="int8", file_encoding="zstd"),                             # 1/2, then zstd
    Profile("fp8-zstd", storage="fp8", file_encoding="zstd"),                               # 1/2, then zstd
    Profile("fp8-stride2-zstd", storage="fp8", sigma_stride=2, file_encoding="zstd"),       # 1/4, then zstd
    Profile("int8-stride2", storage="int8", sigma_stride=2),                                # 1/4
    Profile("int8-stride2-zstd", storage="int8", sigma_stride=2, file_encoding="zstd"),     # 1/4, then zstd
    Profile("int8-stride3-zstd", storage="int8", sigma_stride=3, file_encoding="zstd"),     # 1/6, then zstd
    Profile("int8-lowrank-half", storage="int8", rank_budget=0.5),                          # <= 1/4
    Profile("int8-lowrank-half-zstd", storage="int8", rank_budget=0.5, file_encoding="zstd"),
    Profile("int8-cond-stride2", storage="int8", chunks="cond", sigma_stride=2),            # 1/8
    Profile("int8-cond-lowrank-quarter-zstd", storage="int8", chunks="cond", rank_budget=0.25,
            file_encoding="zstd"),                                                           # <= 1/16, then zstd
    # the attn1 input instead of K and V (Use projects it with the layer's to_k/to_v): 1/2 before anything else
    Profile("input", keep="input"),                                                         # 1/2
    Profile("input-int8", keep="input", storage="int8"),                                    # 1/4
    Profile("input-int8-zstd", keep="input", storage="int8", file_encoding="zstd"),         # 1/4, then zstd
    Profile("input-int8-cond", keep="input", storage="int8", chunks="cond"),                # 1/8
    Profile("input-int8-cond-zstd", keep="input", storage="int8", chunks="cond", file_encoding="zstd"),
    Profile("input-int8-stride2", keep="input", storage="int8", sigma_stride=2),            # 1/8
    Profile("input-int8-cond-stride2-zstd", keep="input", storage="int8", chunks="cond", sigma_stride=2,
            file_encoding="zstd"),                                                           # 1/16, then zstd
    Profile("input-fp8-stride2-zstd", keep="input", storage="fp8", sigma_stride=2, file_encoding="zstd"),
)}

# The default: each layer's attn1 input (a DiT block's: its image tokens' attention input, with their positions)
# instead of K and V (1/2), int8 per channel (1/2), every 2nd sampled sigma (1/2), zstd files: 1/10 of raw fp16 K/V;
# chosen from the tables in docs/profiles.md and docs/flux.md.
LEAN = Profile("lean", keep="input", storage="int8", sigma_stride=2, file_encoding="zstd")
# The smallest: the reference's latent at each sigma and its conditioning (a few MB); a Use evaluates the rows again,
# one more U-Net call a step.
TRAJECTORY = Profile("trajectory", keep="trajectory")

PROFILES: dict[str, Profile] = {p.name: p for p in (LEAN, EXACT, BALANCED, COMPACT, TRAJECTORY)}  # panel, Settings
DEFAULT_PROFILE = "lean"  # on every family: on Flux and Chroma too (docs/flux.md, "Profiles")


def get_profile(name: str) -> Profile:
    """The format of a saved reference, by the profile name its manifest gives: an offered one or a read-only one."""
    try:
        return PROFILES.get(name or DEFAULT_PROFILE) or READ_ONLY[name]
    except KeyError:
        raise RefDropError(f"RefDrop: unknown storage profile {name!r}; choose one of {', '.join(PROFILES)}") from None


def profile_to_save(name: str) -> Profile:
    """A profile a Save may write (``""``: the default): an offered one. A read-only format is refused by name."""
    if name in READ_ONLY and name not in PROFILES:
        raise RefDropError(f"RefDrop: storage profile {name!r} is no longer offered (references saved with it stay "
                           f"readable); choose one of {', '.join(PROFILES)}")
    return get_profile(name)
