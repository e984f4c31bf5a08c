"""Tools that make the pictures in docs/img, run from the repository root as ``python -m tools.<name>``."""
