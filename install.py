"""Run by the WebUI (in a subprocess) when the extension is installed or the WebUI starts, and by ComfyUI-Manager
after it installed requirements.txt (there, nothing is missing; without the WebUI's ``launch`` it installs nothing).

RefDrop needs torch and safetensors, which both hosts already ship, and zstandard for the storage profiles that
compress their files (neither host's environment has it); each is installed only if it is missing.
"""

import importlib.util

REQUIREMENTS = {"safetensors": "safetensors", "zstandard": "zstandard==0.25.0"}  # module -> pip requirement

for module, requirement in REQUIREMENTS.items():
    if importlib.util.find_spec(module) is None and importlib.util.find_spec("launch") is not None:
        import launch

        launch.run_pip(f"install {requirement}", f"{module} for sd-refdrop")
