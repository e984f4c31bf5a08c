"""Benchmarks: speed and bytes of RefDrop (``python -m benchmarks.speed``), fidelity of storage profiles
(``python -m benchmarks.profiles``; on Flux and Chroma ``python -m benchmarks.dit_profiles``), run from the repository
root. They print numbers; nothing here is a pass/fail test. They drive the engine through tests/support (hostsim, the
tiny Flux and Chroma), like the tests do."""
