"""RefDrop (reference feature guidance) for the Forge and reForge WebUIs.

Everything except the host wiring in ``scripts/refdrop.py`` lives here, one concern per module.
"""

__version__ = "0.1.0"
