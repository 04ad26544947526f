"""README's first command: `bash install.sh` puts the router in ./.venv, off PATH, and it serves."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_install_script_makes_a_virtual_environment_with_the_router(tmp_path):
    """A clean copy of the tracked files; install.sh makes .venv and installs the package from
    it (dependencies from the package index); the command runs, and pynetdicom's own
    storescp/findscu stay in .venv/bin, which is not put on PATH."""
    copy = tmp_path / "dicom-router"
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True)
    except FileNotFoundError:
        pytest.skip("no git to take a clean copy of the tracked files")
    if archive.returncode != 0:
        pytest.skip("not a git checkout")
    copy.mkdir()
    subprocess.run(["tar", "-x", "-C", str(copy)], input=archive.stdout, check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    installed = subprocess.run(["bash", "install.sh"], cwd=copy, capture_output=True, text=True, timeout=900, env=env)
    assert installed.returncode == 0, installed.stderr
    assert "installed:" in installed.stdout
    version = subprocess.run([str(copy / ".venv/bin/dicom-router"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("dicom-router ")
    check = subprocess.run(
        [str(copy / ".venv/bin/dicom-router"), "check", "--tier", "references"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr  # the embedded default, from the installed package
    assert (copy / ".venv/bin/storescp").exists()
    assert str(copy / ".venv/bin") not in env.get("PATH", "")
