"""The package's layers point one way: import-linter checks the contract in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_layer_contract_is_kept():
    """import-linter runs from its own virtual environment (tests/run.sh makes it and names it in
    ``DICOM_ROUTER_LINT_IMPORTS``), with the repository on its path."""
    beside = Path(sys.executable).parent / "lint-imports"
    command = (
        os.environ.get("DICOM_ROUTER_LINT_IMPORTS")
        or (str(beside) if beside.exists() else None)
        or shutil.which("lint-imports")
    )
    assert command, "import-linter runs from .venv-tools: bash tests/run.sh makes it"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([command, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout
