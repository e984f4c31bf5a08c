"""Benchmarks: speed and bytes of RefDrop (``python -m benchmarks.speed``), fidelity of storage profiles
(``python -m benchmarks.profiles``), run from the repository root. They print numbers; nothing here is a pass/fail
test. They drive the engine through the library's diffusers host (lib_refdrop/diffusers.py) on devmodel/'s
random-weight U-Nets and samplers, like the tests do."""
