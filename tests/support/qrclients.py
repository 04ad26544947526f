"""DCMTK findscu, movescu and getscu as query/retrieve clients, with their answers collected."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import Dataset, dcmread

from tests.support.peers import dcmtk, dcmtk_env

MODELS = {"study": "-S", "patient": "-P", "worklist": "-W"}


def _keys(keys: list[str]) -> list[str]:
    out = []
    for key in keys:
        out += ["-k", key]
    return out


def findscu(
    port: int, called: str, keys: list[str], out_dir: Path, model: str = "study", calling: str = "QRCLIENT"
) -> tuple[subprocess.CompletedProcess, list[Dataset]]:
    """Run findscu; the answers it received, read back from the files it extracted."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        dcmtk("findscu"),
        MODELS[model],
        "-aet",
        calling,
        "-aec",
        called,
        "-X",
        "-od",
        str(out_dir),
        *_keys(keys),
        "127.0.0.1",
        str(port),
    ]
    result = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    return result, [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def movescu(
    port: int, called: str, destination: str, keys: list[str], model: str = "study", calling: str = "QRCLIENT"
) -> subprocess.CompletedProcess:
    cmd = [
        dcmtk("movescu"),
        "-d",
        MODELS[model],
        "-aet",
        calling,
        "-aec",
        called,
        "-aem",
        destination,
        *_keys(keys),
        "127.0.0.1",
        str(port),
    ]
    return subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=300)


def getscu(
    port: int,
    called: str,
    keys: list[str],
    out_dir: Path,
    model: str = "study",
    calling: str = "QRCLIENT",
    options: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        dcmtk("getscu"),
        "-d",
        MODELS[model],
        "-aet",
        calling,
        "-aec",
        called,
        "-od",
        str(out_dir),
        *options,
        *_keys(keys),
        "127.0.0.1",
        str(port),
    ]
    return subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=300)


def final_counts(output: str) -> dict[str, int]:
    """The sub-operation counts of the last response movescu/getscu printed with -d."""
    counts = {}
    for line in output.splitlines():
        for name in ("Remaining", "Completed", "Failed", "Warning"):
            marker = f"Number of {name} Suboperations"
            if marker in line or f"{name} Suboperations" in line:
                digits = "".join(ch for ch in line.rsplit(":", 1)[-1] if ch.isdigit())
                if digits:
                    counts[name] = int(digits)
    return counts


def answers_by(datasets: list[Dataset], *keywords: str) -> set[tuple]:
    return {tuple(str(ds.get(k, "")) for k in keywords) for ds in datasets}
