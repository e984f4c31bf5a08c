"""Validation of reference names: what a user may call a reference, and the folder it maps to.

A name becomes one folder name directly under the store, so it must never be able to name anything else.
"""

from __future__ import annotations

import datetime
import re
import unicodedata

from .errors import RefDropError

MAX_NAME_LENGTH = 80
_ALLOWED = re.compile(r"^[\w][\w .()+\-]*$")  # \w is unicode-aware: letters, digits, underscore
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


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
    if not _ALLOWED.match(name):
        raise RefDropError(
            f"RefDrop: the reference name {name!r} may only use letters, digits, spaces and _ - . ( ) +,"
            " and must start with a letter or digit"
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
