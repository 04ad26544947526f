"""What the sdist and the wheel contain: built with the project's own build backend (hatchling)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def tracked_files() -> set[str]:
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip("not a git checkout: nothing to compare the distributions with")
    return {line for line in done.stdout.splitlines() if (ROOT / line).is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_holds_the_package_its_data_the_bundled_pipelines_and_the_licence_only(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        bundled = {Path(n).name: archive.read(n) for n in names if n.startswith("router/_bundled/pipelines/")}
    tracked = tracked_files()
    package = {f for f in tracked if f.startswith("router/")}
    assert package <= names, sorted(package - names)
    outside = {n for n in names if not n.startswith(("router/", "dicom_router-"))}
    assert outside == set()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    pipelines = {Path(f).name: (ROOT / f).read_bytes() for f in tracked if f.startswith("pipelines/")}
    assert bundled == pipelines, "the starter pipelines come from pipelines/ only"


def test_the_sdist_holds_every_tracked_file_and_nothing_untracked(built):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        files = {member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()}
    files.discard("PKG-INFO")
    tracked = tracked_files()
    assert tracked <= files, sorted(tracked - files)
    assert files - tracked == set(), "caches, data or build output in the sdist"
