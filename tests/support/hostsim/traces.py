"""Load the recorded host traces (shared/host-traces) and replay them as patch calls.

CI clones the repository with ``shared/`` beside it, so the traces live at ``<repo>/../shared/host-traces``;
``<repo>/shared/host-traces`` (a checkout that carries ``shared/`` inside) and ``$HOSTSIM_TRACES`` also work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["traces_dir", "load_trace", "extra_options_of", "replay_calls", "split_forwards"]

REPO = Path(__file__).resolve().parents[3]
_SHAPE_KEYS = ("pass", "q", "k", "v", "dtype")


def traces_dir() -> Path:
    """The host-traces folder. A test that needs it fails where it is missing (FileNotFoundError naming where it
    looked), never skips: a checkout without the traces must not pass for one that checked against them."""
    candidates = [os.environ.get("HOSTSIM_TRACES"), REPO.parent / "shared" / "host-traces",
                  REPO / "shared" / "host-traces"]
    for cand in candidates:
        if cand and Path(cand).is_dir():
            return Path(cand)
    looked = ", ".join(str(c) for c in candidates if c)
    raise FileNotFoundError(f"shared/host-traces not found (looked in {looked}; or set HOSTSIM_TRACES)")


def load_trace(host: str, case: str) -> dict:
    """``<traces>/<host>/<case>.json`` as a dict (``host`` is "forge" or "reforge")."""
    with open(traces_dir() / host / f"{case}.json", encoding="utf-8") as fh:
        return json.load(fh)


def _tensor(spec: dict, call: dict) -> torch.Tensor:
    dtype = getattr(torch, spec["dtype"].removeprefix("torch."))
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=dtype).reshape(spec["tensor"])
    if spec is call.get("cond_mark"):  # > 16 rows: rebuild from cond_or_uncond
        b = call["q"][0] // len(call["cond_or_uncond"])
        return torch.tensor([float(c) for c in call["cond_or_uncond"] for _ in range(b)], dtype=dtype)
    return torch.zeros(spec["tensor"], dtype=dtype)


def extra_options_of(call: dict) -> dict:
    """The ``extra_options`` dict the host passed for one recorded call, in the recorded key order.

    Tensor fields (``sigmas``, ``cond_mark``) become tensors; ``block`` becomes a tuple, as the hosts pass it
    (JSON can only store a list); everything else stays as recorded (lists, ints, None).
    """
    eo = {}
    for key, val in call.items():
        if key in _SHAPE_KEYS:
            continue
        if isinstance(val, dict) and "tensor" in val:
            val = _tensor(val, call)
        elif key == "block":
            val = tuple(val)
        eo[key] = val
    return eo


def replay_calls(trace: dict, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]:
    """Yield ``(q, k, v, extra_options)`` per recorded call: seeded random tensors of the recorded shapes."""
    gen = torch.Generator().manual_seed(seed)
    for call in trace["calls"]:
        dtype = getattr(torch, call.get("dtype", "torch.float32").removeprefix("torch."))
        q, k, v = (torch.randn(call[name], generator=gen, dtype=dtype) for name in ("q", "k", "v"))
        yield q, k, v, extra_options_of(call)


def split_forwards(calls: list[dict]) -> list[list[dict]]:
    """Group call rows into U-Net forwards: a forward starts at ``transformer_index == 0 and block_index == 0``."""
    forwards: list[list[dict]] = []
    for call in calls:
        if call["transformer_index"] == 0 and call["block_index"] == 0:
            forwards.append([])
        forwards[-1].append(call)
    return forwards
