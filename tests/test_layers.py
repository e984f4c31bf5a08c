"""The package's layers and their one-way arrows: run -> attn, reference; webui, comfyui -> everything below them;
nothing below webui imports the host (``modules``), gradio or fastapi, only patcher/ the patcher hosts' kernel
packages, only comfyui/ ComfyUI's, and comfyui/ never imports webui/; no import cycle among the package's modules."""

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
    "attn": set(),
    "reference": {"attn"},
    "images": set(),  # images and masks from user input (PIL), decoded once
    "params": {"images"},
    "dit": {"attn"},  # Flux blocks and eq. 15 around the engine's patch
    "run": {"attn", "reference", "params", "images", "dit"},
    "standalone": {"attn", "reference", "params", "run"},
    "patcher": {"attn", "dit"},  # host-neutral ModelPatcher glue: installs what run planned, never plans
    "library": {"reference"},  # the reference library's HTTP answers, for every host's routes
    "webui": {"attn", "reference", "params", "images", "run", "standalone", "dit", "patcher", "library"},
    "comfyui": {"attn", "reference", "params", "images", "run", "standalone", "dit", "patcher", "library"},
}
SHARED = {"errors", "families", "__init__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports at run time (``if TYPE_CHECKING`` blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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


def test_the_shared_modules_import_no_layer():
    for module, imported in _modules().items():
        if _layer(module) in SHARED and module != "lib_refdrop":
            assert {_layer(t) for t in imported if t.startswith("lib_refdrop.")} <= SHARED, module


def test_no_import_cycle():
    graph = {m: {t for t in deps if t.startswith("lib_refdrop") and t != m} for m, deps in _modules().items()}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError(" -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in graph.get(module, ()):
            visit(target)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)
