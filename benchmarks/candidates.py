"""Storage profiles measured but not offered: the read-only formats (``reference/profiles.py`` ``READ_ONLY``) and
whatever a measurement adds. A Save writes only offered profiles; ``offering`` lets a benchmark, a dev-model measure
or a test save with candidates for as long as it runs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from lib_refdrop.reference.profiles import PROFILES, READ_ONLY, Profile

CANDIDATES: dict[str, Profile] = dict(READ_ONLY)


@contextmanager
def offering(profiles: Iterable[Profile]) -> Iterator[None]:
    """Saves may use ``profiles`` inside the block, as if they were offered."""
    added = {p.name: p for p in profiles if p.name not in PROFILES}
    PROFILES.update(added)
    try:
        yield
    finally:
        for name in added:
            PROFILES.pop(name, None)
