"""Benchmarks: speed and bytes of RefDrop (``python -m benchmarks.speed``), fidelity of storage profiles
(``python -m benchmarks.profiles``; on Flux and Chroma ``python -m benchmarks.dit_profiles``), run from the repository
root. They print numbers; nothing here is a pass/fail test. They drive the engine like the tests do: U-Nets through
the library's diffusers host (lib_refdrop/diffusers.py) on devmodel/'s random-weight U-Nets and samplers, Flux and
Chroma on the tests' tiny models (tests/support)."""
