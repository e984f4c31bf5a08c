"""Run by the WebUI (in a subprocess) when the extension is installed or the WebUI starts.

RefDrop needs only torch and safetensors, which both hosts already ship; install safetensors only if it is missing.
"""

import importlib.util

if importlib.util.find_spec("safetensors") is None:
    import launch

    launch.run_pip("install safetensors", "safetensors for sd-refdrop")
