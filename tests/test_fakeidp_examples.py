"""The fake-IdP example suite (examples/thirdparty_fixture_tests) passes as documented in
sdk/README_FAKEIDP.md: ``python -m pytest examples/thirdparty_fixture_tests``."""

from __future__ import annotations

import re
import subprocess
import sys

from test_examples import ROOT, child_env


def test_fixture_suite_passes() -> None:
    """README "Use codeflow as a fake IdP in your tests": the example suite passes."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "examples/thirdparty_fixture_tests"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b8 passed\b", result.stdout), result.stdout
