"""Settings for the whole suite. The tests import what they share as ``tests.support.*`` from the repository root,
which ``python -m pytest`` puts on ``sys.path`` and pyproject.toml's ``pythonpath`` adds for a plain ``pytest``."""

# One thread: the suite runs many tiny models, where thread start-up and contention cost more than they gain
# (and CI machines are small and shared).
import torch

torch.set_num_threads(1)
