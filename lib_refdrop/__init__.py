"""RefDrop (reference feature guidance) for the Forge and reForge WebUIs.

Everything except the host wiring in ``scripts/refdrop.py`` lives here, one concern per module.
"""

__version__ = "0.1.0"
TITLE = "RefDrop"  # the script's title: its panel label and its key in the API's ``alwayson_scripts``
