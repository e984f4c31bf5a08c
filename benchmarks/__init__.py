"""Benchmarks: speed and bytes of RefDrop (``python -m benchmarks.speed``), fidelity of storage profiles
(``python -m benchmarks.profiles``). They print numbers; nothing here is a pass/fail test."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:  # the benchmarks drive the engine through tests/hostsim, like the tests do
    sys.path.insert(0, _TESTS)
