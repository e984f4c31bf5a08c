"""Opening files of a store that may come from someone else: regular files only, never through a link.

A store can be a folder copied from another machine, an unpacked archive or a network drive, so a file that
should hold tensors or a preview may be a symbolic link (to ``/proc/self/environ``, to a file outside the store),
a FIFO (whose read never returns), a device or a huge sparse file. ``open_regular`` refuses all of these before
a byte is read; ``read_at`` reads an opened file by offset, so one descriptor serves any number of reads.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)   # the last path component may not be a link (POSIX)
    | getattr(os, "O_NONBLOCK", 0)   # a FIFO planted after the check cannot block the open
    | getattr(os, "O_BINARY", 0)     # Windows: no newline translation
    | getattr(os, "O_CLOEXEC", 0)
)
_KINDS = (
    (stat.S_ISLNK, "a link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
)


class NotRegularFile(OSError):
    """The path exists but is not a plain file (``reason`` says what it is instead)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{Path(path).name} is {reason}, not a plain file")
        self.reason = reason


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "not a plain file")


def open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file ``path``; ``NotRegularFile`` for anything else.

    ``lstat`` before and ``fstat`` after the open must agree, so a file swapped for a link or a FIFO in between
    is refused too (this also covers Windows, which has no ``O_NOFOLLOW``)."""
    before = os.lstat(path)  # FileNotFoundError goes to the caller
    if not stat.S_ISREG(before.st_mode):
        raise NotRegularFile(path, _kind(before.st_mode))
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise NotRegularFile(path, "a link") from None
        raise exc
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise NotRegularFile(path, "replaced while it was opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


def regular_size(path: Path) -> int:
    """The size of the regular file ``path`` without opening it; ``NotRegularFile`` for anything else."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(path, _kind(st.st_mode))
    return st.st_size


def size_of(fd: int) -> int:
    return os.fstat(fd).st_size


_seek_lock = threading.Lock()  # only where os.pread is missing (Windows): seek + read must not interleave


def read_at(fd: int, size: int, offset: int = 0) -> bytes:
    """Exactly ``size`` bytes from ``offset`` (fewer only if the file is shorter)."""
    chunks, done = [], 0
    while done < size:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, size - done, offset + done)
        else:
            with _seek_lock:
                os.lseek(fd, offset + done, os.SEEK_SET)
                chunk = os.read(fd, size - done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The whole regular file ``path``; ``FileTooLarge`` above ``max_bytes`` (checked before reading)."""
    fd = open_regular(path)
    try:
        size = size_of(fd)
        if size > max_bytes:
            raise FileTooLarge(path, size, max_bytes)
        return read_at(fd, size)
    finally:
        os.close(fd)


class FileTooLarge(OSError):
    def __init__(self, path: Path, size: int, limit: int):
        super().__init__(f"{Path(path).name} has {size} bytes, more than the {limit} a RefDrop file may have")
        self.size, self.limit = size, limit


def is_real_dir(path: Path) -> bool:
    """A folder that is not a link (``Path.is_dir`` follows links)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def describe(path: Path) -> str:
    """What ``path`` is, for messages: "a link", "a FIFO", "a plain file"..."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "missing"
    return "a plain file" if stat.S_ISREG(mode) else _kind(mode)
