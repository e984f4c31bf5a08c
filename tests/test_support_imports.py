"""The code the tests share is one package, imported one way: ``tests.support.*`` from the repository root.

Importing it under a second name (``import hostsim`` with tests/ on ``sys.path``) would give one process two module
objects of the same code, so a patch of one would miss the other. Only the fake host puts folders on ``sys.path``:
its fake ``modules``/``backend``/``ldm_patched`` packages are imported the way a host imports them.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOVED = "|".join(("hostsim", "fakehost", "faultkit", "refdrop_harness"))
SECOND_NAME = re.compile("|".join((
    rf"^[ \t]*(?:import|from)[ \t]+(?:tests\.)?(?:{MOVED})\b",  # import hostsim, from tests.faultkit import ...
    r"^[ \t]*(?:import|from)[ \t]+support\b",                  # tests/ on sys.path: support.hostsim
    rf"^[ \t]*from[ \t]+tests[ \t]+import[ \t]+(?:{MOVED})\b",  # from tests import hostsim
)), re.M)
SYS_PATH_EDIT = re.compile(r"sys\.path[ \t]*(?:\[[^\]]*\][ \t]*)?\+?=(?!=)|sys\.path\.(?:insert|append|extend)\(")
FAKE_HOST = REPO / "tests" / "support" / "fakehost"


TESTS_IMPORT = re.compile(r"^[ \t]*(?:import|from)[ \t]+tests\b", re.M)


def sources(folders=("tests", "benchmarks", "tools", "devmodel")) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_the_support_package_is_imported_as_tests_support():
    found = [f"{p.relative_to(REPO)}:{s.group(0).strip()}" for p in sources()
             for s in SECOND_NAME.finditer(p.read_text(encoding="utf-8"))]
    assert found == []


def test_nothing_but_the_fake_host_edits_sys_path():
    found = [f"{p.relative_to(REPO)}:{s.group(0)}" for p in sources() if FAKE_HOST not in p.parents
             for s in SYS_PATH_EDIT.finditer(p.read_text(encoding="utf-8"))]
    assert found == []


# The DiT benchmarks run on the tests' tiny Flux and Chroma (tests/support/tinyflux.py, tinychroma.py).
ON_TEST_MODELS = {"benchmarks/dit_profiles.py"}


def test_the_dev_models_and_benchmarks_do_not_import_the_tests():
    """U-Nets run on the library's diffusers host (lib_refdrop/diffusers.py) and devmodel/'s samplers, not on a test
    package."""
    found = {str(p.relative_to(REPO)) for p in sources(("devmodel", "benchmarks"))
             if TESTS_IMPORT.search(p.read_text(encoding="utf-8"))}
    assert found == ON_TEST_MODELS
