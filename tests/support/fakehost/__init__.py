"""A minimal stand-in for the WebUI hosts, for testing ``scripts/refdrop.py`` and the host adapters.

``host/modules``: the parts of A1111's ``modules`` package RefDrop touches (scripts, script_callbacks, shared, paths,
ui_components, processing), reduced to what both hosts share. ``forge/backend`` and ``reforge/ldm_patched``: the
attention function of each host family (``neo/backend``: Forge Neo's, with its Flux and Wan arithmetic).
``objects``: a fake ``UnetPatcher`` (``clone`` deep-copies ``model_options`` like the real ones) and a fake ``p``.
:func:`activated` puts a flavour on ``sys.path`` for one test and removes every trace afterwards, so tests that check
"imports without a host" are not affected.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
HOST_PACKAGES = ("modules", "backend", "ldm_patched", "launch")
# neo: Forge Neo, Forge's backend with ComfyUI's Flux code (``backend.nn.flux``: its modulation and RoPE arithmetic)
FLAVOUR_DIRS = {"forge": HERE / "forge", "neo": HERE / "neo", "reforge": HERE / "reforge", "none": None}


def _forget_host_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in HOST_PACKAGES or name.startswith("refdrop_script_under_test"):
            del sys.modules[name]


@contextlib.contextmanager
def activated(flavour: str = "forge", models_path: str | Path | None = None):
    """Make ``import modules...`` (and the flavour's attention module) work inside the block."""
    paths = [str(HERE / "host")]
    if FLAVOUR_DIRS[flavour] is not None:
        paths.append(str(FLAVOUR_DIRS[flavour]))
    _forget_host_modules()
    _forget_detected_host()
    sys.path[:0] = paths
    try:
        import modules.paths

        if models_path is not None:
            modules.paths.models_path = str(models_path)
        yield
    finally:
        for path in paths:
            sys.path.remove(path)
        _forget_host_modules()
        _forget_detected_host()
        from lib_refdrop.webui import opts as options

        options.forget_store()


def _forget_detected_host() -> None:
    """The library detects the host once per process; each activation is a new host process for it."""
    from lib_refdrop.webui import hosts

    hosts.detect.cache_clear()


def load_script():
    """Import ``scripts/refdrop.py`` the way the host does (by file path); returns the module."""
    spec = importlib.util.spec_from_file_location("refdrop_script_under_test", REPO / "scripts" / "refdrop.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
