"""Benchmarks: speed and bytes of RefDrop (``python -m benchmarks.speed``), fidelity of storage profiles
(``python -m benchmarks.profiles``), run from the repository root. They print numbers; nothing here is a pass/fail
test. They drive the engine through tests/support/hostsim, like the tests do."""
