"""The child side of the SIGKILL tests: a store operation that stops, on request, at its k-th file-system step.

Runs in a process forked from a multiprocessing fork server (torch is imported once, not per kill). The child
wraps the file-system calls the store and writer make (this module only, never the library) and counts them;
at step ``kill_at`` it tells the parent where it is and sleeps until the parent SIGKILLs it. ``kill_at=-1``
runs to the end and reports how many steps there were; ``jitter`` adds a short sleep at every step instead,
for kills after a random delay.
"""

from __future__ import annotations

import os
import shutil
import time


def run(root: str, op: str, name: str, new_name: str, kill_at: int, conn, jitter: float = 0.0) -> None:
    from lib_refdrop.reference import store as store_module
    from lib_refdrop.reference import writer as writer_module
    from tests.support import faultkit

    steps = [0]

    def step(label: str) -> None:
        k = steps[0]
        steps[0] += 1
        if jitter:
            time.sleep(jitter)
        if k == kill_at:
            conn.send(("at", k, label))
            time.sleep(120)  # the parent kills us here

    def write_file(path, data):
        step(f"create {path.name}")
        with open(path, "wb") as fh:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            step(f"half of {path.name} written")
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
        step(f"wrote {path.name}")

    real_replace, real_fsync, real_rmtree = os.replace, os.fsync, shutil.rmtree

    def replace(src, dst):
        step(f"rename {os.path.basename(src)} -> {os.path.basename(dst)}")
        real_replace(src, dst)
        step(f"renamed -> {os.path.basename(dst)}")

    def fsync(fd):
        step("fsync")
        real_fsync(fd)

    def rmtree(path, *a, **kw):
        step(f"rmtree {os.path.basename(path)}")
        real_rmtree(path, *a, **kw)

    store = store_module.ReferenceStore(root)
    writer_module._write_file = write_file
    os.replace, os.fsync, shutil.rmtree = replace, fsync, rmtree
    if op in ("save", "overwrite"):
        writer = faultkit.start_reference(store, name, seed=7, overwrite=op == "overwrite", sigmas=(9.0, 0.5))
        writer.wait(60)
        result = writer.status.state
    elif op == "rename":
        result = store.rename(name, new_name)
    elif op == "delete":
        store.delete(name)
        result = "deleted"
    elif op == "set_mask":
        store.set_mask(name, faultkit.PNG)
        result = "masked"
    else:
        raise ValueError(op)
    conn.send(("done", steps[0], result))
