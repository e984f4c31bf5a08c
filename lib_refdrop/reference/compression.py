"""Lossless zstd compression of slot files (profiles with ``file_encoding="zstd"``; the PyPI package ``zstandard``).

A compressed file is untrusted like any other: its checksum is verified on the bytes on disk before it is
decompressed, and it may decompress to at most the size its manifest entry records (``raw_bytes``), itself bounded
by what the current model's layers can hold at the largest generation (the reader checks the manifest's layers
against the model first), so a small file that expands to gigabytes (a "zip bomb") is refused after reading one
byte more than that. Decompression streams in chunks: memory grows with what the file really holds, never with
what its manifest claims.
"""

from __future__ import annotations

import io

from ..errors import RefDropError

ZSTD = "zstd"
SUFFIX = ".zst"       # slot_0000_0.safetensors.zst
# zstd's default level: level 1 lost 3-7 % of the ratio on int8 codes and factors of the tiny test model's rows;
# levels 9 and 19 gained under 0.2 % on Gaussian-like rows (fp16, int8, fp8) and compress 1.4x to 300x slower
LEVEL = 3
PACKAGE = "zstandard==0.25.0"
CHUNK = 1 << 20  # bytes decompressed at a time


def _zstandard(why: str):
    try:
        import zstandard
    except ImportError:
        raise RefDropError(
            f"RefDrop: {why} needs the Python package zstandard, which is not installed: run "
            f"`pip install {PACKAGE}` in the WebUI's Python environment (the extension's install.py does this when "
            "the WebUI starts) and try again"
        ) from None
    return zstandard


def available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def compress(data: bytes, why: str = "a zstd storage profile") -> bytes:
    return _zstandard(why).ZstdCompressor(level=LEVEL).compress(data)


def decompress_bounded(data: bytes, size: int, why: str) -> bytes:
    """The decompressed ``data``, which must be exactly ``size`` bytes; ``ValueError`` saying what is wrong (a
    longer output is cut off after ``size + 1`` bytes, whatever the frame header claims)."""
    zstandard = _zstandard(why)
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while len(out) <= size:
                chunk = reader.read(min(CHUNK, size + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise ValueError(f"is not valid zstd data ({exc})") from None
    if len(out) != size:
        got = f"more than {size}" if len(out) > size else str(len(out))
        raise ValueError(f"decompresses to {got} bytes; its manifest entry records {size}")
    return bytes(out)


def decompress_entry(reference: str, entry: dict, data: bytes, bound: int) -> bytes:
    """The safetensors bytes of a zstd slot file of ``reference`` whose manifest ``entry`` says how large they
    are, refused (``RefDropError``) above ``bound`` (what the reference's layers can hold) or off that size."""
    if entry["raw_bytes"] > bound:
        raise RefDropError(
            f"RefDrop: reference '{reference}' is corrupt: {entry['file']} claims to hold {entry['raw_bytes']} "
            f"bytes, more than the {bound} its manifest's layers can fill"
        )
    try:
        return decompress_bounded(data, entry["raw_bytes"], f"reference '{reference}' (zstd)")
    except ValueError as exc:
        raise RefDropError(f"RefDrop: reference '{reference}' is corrupt: {entry['file']} {exc}") from None
