"""Make tests/ importable so that test modules can ``import hostsim`` under any pytest import mode."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# One thread: the suite runs many tiny models, where thread start-up and contention cost more than they gain
# (and CI machines are small and shared).
import torch  # noqa: E402

torch.set_num_threads(1)
