"""The panel's status line about the most recent Save (🔄 and the page's polling show it)."""

from __future__ import annotations

from ...run import SAVING


def status_line(writer) -> str:
    """Progress while ``writer`` (a ``ReferenceWriter``, or None before any Save) writes, then its result."""
    if writer is None:
        return ""
    status = writer.status
    if status.state == "writing":
        return f"{SAVING} '{status.name}'… ({status.bytes // 1_000_000} MB so far)"
    return status.message
