"""The node binary that runs javascript/refdrop.js in the page-script tests."""

from __future__ import annotations

import os
import shutil

import pytest


def node_binary() -> str:
    """Path of ``node``. Where it is missing the page-script tests are skipped on a developer's machine, but fail on
    CI (``CI=true``), whose machine has node: a script test that stopped running must not pass for one that ran."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is not installed on CI: javascript/refdrop.js was not run")
        pytest.skip("node is not installed: the page's script is not run")
    return node
