"""The package's layers and their one-way arrows: run -> (bake ->) attn -> reference (the on-disk format, which
imports no other layer); webui, comfyui -> everything below them; nothing below webui imports the host
(``modules``), gradio or fastapi, only patcher/ the patcher hosts' kernel packages, only comfyui/ ComfyUI's, and
comfyui/ never imports webui/; no import cycle among the package's modules or its layers. Imports only made for type
checkers (``if TYPE_CHECKING``) count like any other: they are arrows a reader follows too. The WebUI's entry script
(``scripts/``) stands above the webui layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lib_refdrop"
HOST_ONLY = ("modules", "gradio", "fastapi", "starlette", "pydantic", "backend", "ldm_patched", "comfy",
             "folder_paths", "comfy_api", "server", "aiohttp")
KERNEL_PACKAGES = ("backend", "ldm_patched", "comfy")  # what patcher/kernels.py imports when a host asks for it
# what the ComfyUI node pack (comfyui/) imports when ComfyUI loads it: never a WebUI's
COMFYUI_PACKAGES = ("comfy", "folder_paths", "comfy_api", "server", "aiohttp")
# layer -> layers it may import (besides itself and the package's top-level errors/families/TITLE)
ALLOWED = {
    "reference": set(),  # the on-disk format: names, manifests, the store, reading and writing
    "attn": {"reference"},
    "images": set(),  # images and masks from user input (PIL), decoded once
    "crop": set(),  # the box an image and its mask are cut to a pass by
    "params": {"images"},
    "dit": {"attn"},  # Flux blocks and eq. 15 around the engine's patch
    "bake": {"attn", "reference"},  # a trajectory reference's rows, baked by its first Use
    "run": {"attn", "reference", "params", "images", "crop", "dit", "bake"},
    "standalone": {"attn", "reference", "params", "run"},
    "diffusers": {"attn", "run", "standalone"},  # the library's diffusers host: installs what run planned
    "patcher": {"attn", "dit", "reference", "run"},  # host-neutral ModelPatcher glue: installs what run planned
    "library": {"reference"},  # the reference library's HTTP answers, for every host's routes
    "webui": {"attn", "reference", "params", "images", "crop", "run", "standalone", "dit", "patcher", "library"},
    "comfyui": {"attn", "reference", "params", "images", "crop", "run", "standalone", "dit", "patcher", "library"},
}
SHARED = {"errors", "families", "__init__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str | None = None) -> set[str]:
    """Absolute names of everything ``path`` imports, ``if TYPE_CHECKING`` blocks included (``package``: the package
    its relative imports start from, where it is not inside lib_refdrop)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # "from . import x" imports module x
    return found


def _modules() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} | {m for m in _imports(path) if
                                                                   m.split(".")[0] in HOST_ONLY}
            for name, path in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, imported in _modules().items():
        layer = _layer(module)
        if layer in SHARED:
            continue
        for target in imported:
            if target.split(".")[0] in HOST_ONLY:
                root = target.split(".")[0]
                if layer != "webui" and not (layer == "patcher" and root in KERNEL_PACKAGES) and not (
                        layer == "comfyui" and root in COMFYUI_PACKAGES):
                    wrong.append(f"{module} imports the host-only {target}")
                continue
            target_layer = _layer(target)
            if target_layer not in SHARED and target_layer != layer and target_layer not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_nothing_imports_diffusers():
    """diffusers is the tests' and the library users' package, not the hosts': lib_refdrop/diffusers.py works on the
    modules it is given, so the extension loads where diffusers is not installed."""
    found = [f"{_module_name(path)} imports {name}" for path in PACKAGE.rglob("*.py") for name in _imports(path)
             if name.split(".")[0] == "diffusers"]
    assert found == []


def test_the_shared_modules_import_no_layer():
    for module, imported in _modules().items():
        if _layer(module) in SHARED and module != "lib_refdrop":
            assert {_layer(t) for t in imported if t.startswith("lib_refdrop.")} <= SHARED, module


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    """AssertionError naming the first cycle of ``graph`` (node -> the nodes it imports)."""
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError(" -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        path.append(node)
        for target in graph.get(node, ()):
            visit(target)
        path.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_no_import_cycle():
    _assert_acyclic({m: {t for t in deps if t.startswith("lib_refdrop") and t != m} for m, deps in _modules().items()})


def test_no_import_cycle_between_layers():
    """A cycle of layers (attn -> reference -> attn) is invisible to the module check when it passes through
    different modules of each; the layers' own graph must be acyclic too."""
    graph: dict[str, set[str]] = {}
    for module, imported in _modules().items():
        layer = _layer(module)
        targets = {_layer(t) for t in imported if t.startswith("lib_refdrop.")} - {layer} - SHARED
        graph.setdefault(layer, set()).update(targets)
    _assert_acyclic(graph)


def test_the_entry_script_stands_above_the_webui_layer():
    """The script the WebUI loads may import what the webui layer may, and the webui layer."""
    scripts = PACKAGE.parent / "scripts"
    allowed = {"webui", *ALLOWED["webui"], *SHARED}
    modules = _modules()
    wrong = []
    for path in scripts.glob("*.py"):
        for target in _imports(path, package="scripts") & modules.keys():
            if _layer(target) not in allowed:
                wrong.append(f"{path.name} imports {target}")
    assert wrong == []
