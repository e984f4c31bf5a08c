"""Validation of reference names: what a user may call a reference, and the folder it maps to.

A name becomes one folder name directly under the store, so it must never be able to name anything else:
no separators, no ``..``, no NUL or control characters, no Windows device names, and short enough in bytes
for every common file system.
"""

from __future__ import annotations

import datetime
import unicodedata

from ..errors import RefDropError

MAX_NAME_LENGTH = 80   # characters, what a user sees
MAX_NAME_BYTES = 200   # UTF-8 bytes, what the file system sees (most allow 255; some 4-byte letters are \w)
_PUNCTUATION = set(" _.()+-")
# Letters, digits and combining marks (Devanagari, Thai... need marks); nothing else reaches the file system.
_WORD_CATEGORIES = ("L", "N", "M")
_RESERVED = {
    "con", "prn", "aux", "nul",
    *(f"{dev}{n}" for dev in ("com", "lpt") for n in (*"0123456789", "¹", "²", "³")),
}


def _is_word_char(ch: str) -> bool:
    return ch == "_" or unicodedata.category(ch)[0] in _WORD_CATEGORIES


def validate_name(raw) -> str:
    """Return the canonical (NFC) form of a reference name or raise ``RefDropError`` saying why not."""
    if not isinstance(raw, str):
        raise RefDropError(f"RefDrop: a reference name must be text, got {type(raw).__name__}")
    name = unicodedata.normalize("NFC", raw.strip())
    if not name:
        raise RefDropError("RefDrop: the reference name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise RefDropError(f"RefDrop: the reference name is longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in name or "/" in name or "\\" in name or ".." in name:
        raise RefDropError(f"RefDrop: the reference name {name!r} may not contain '/', '\\\\', '..' or NUL")
    first_ok = unicodedata.category(name[0])[0] in ("L", "N") or name[0] == "_"
    if not first_ok or not all(_is_word_char(ch) or ch in _PUNCTUATION for ch in name):
        raise RefDropError(
            f"RefDrop: the reference name {name!r} may only use letters, digits, spaces and _ - . ( ) +,"
            " and must start with a letter or digit"
        )
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file system can store it
        raise RefDropError(f"RefDrop: the reference name {name!r} is not valid unicode") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise RefDropError(
            f"RefDrop: the reference name is too long for the file system ({len(encoded)} bytes in UTF-8, "
            f"at most {MAX_NAME_BYTES}); use a shorter name"
        )
    if name.endswith((".", " ")):
        raise RefDropError(f"RefDrop: the reference name {name!r} may not end with a dot or a space")
    if name.split(".")[0].strip().lower() in _RESERVED:
        raise RefDropError(f"RefDrop: {name!r} is a reserved file name on Windows")
    return name


def automatic_name(seed, now: datetime.datetime | None = None) -> str:
    """The default name of a new reference: seed and time, e.g. ``ref-1234-20261125-203300``."""
    now = now or datetime.datetime.now()
    return f"ref-{seed}-{now:%Y%m%d-%H%M%S}"
