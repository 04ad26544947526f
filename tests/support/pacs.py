"""Upstream PACS for query/retrieve tests: Orthanc and DCMTK dcmqrscp as subprocesses, on loopback ports.

Each runs with its own configuration and storage in a temporary folder (never as a system
service) and is loaded with generated instances over DICOM.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.peers import (
    dcmtk,
    dcmtk_env,
    free_port,
    stop_process,
    storescu,
    wait_for,
    wait_for_port,
)

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def have_orthanc() -> bool:
    return os.access(ORTHANC, os.X_OK)


def have_orthanc_dicomweb() -> bool:
    return have_orthanc() and os.path.exists(DICOMWEB_PLUGIN)


@dataclass
class Upstream:
    ae_title: str
    port: int
    process: subprocess.Popen
    log_path: Path
    http_port: int = 0

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def stop(self) -> None:
        stop_process(self.process)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_orthanc(
    directory: Path,
    modalities: dict[str, tuple[str, int]],
    ae_title: str = "ORTHANC",
    dicomweb: bool = False,
    users: dict[str, str] | None = None,
    http_port: int = 0,
) -> Upstream:
    """Orthanc with C-GET allowed and the given DICOM modalities (AE title -> (host, port)) known.

    Orthanc answers C-FIND, C-MOVE and C-GET only for modalities it knows, and C-MOVEs only
    to them. The HTTP server is off unless ``dicomweb``: then it listens on a loopback port
    of its own with the DICOMweb plugin at ``/dicom-web/`` (``users``: HTTP basic
    credentials it requires; ``http_port``: its HTTP port, chosen here otherwise).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a port chosen free may be taken by a parallel test before Orthanc binds it
        port = free_port()
        chosen_http_port = (http_port or free_port()) if dicomweb else 0
        process, log_path = _run_orthanc(directory, ae_title, port, dicomweb, chosen_http_port, users, modalities)
        ports = [port, chosen_http_port] if dicomweb else [port]
        wait_for(
            lambda p=process, ps=ports: p.poll() is not None or all(_accepts(x) for x in ps),
            60,
            message=f"Orthanc to listen on {ports}",
        )
        if process.poll() is None:
            return Upstream(ae_title, port, process, log_path, chosen_http_port)
    raise AssertionError(f"Orthanc exited three times; its last log:\n{log_path.read_text(errors='replace')[-2000:]}")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _run_orthanc(
    directory: Path,
    ae_title: str,
    port: int,
    dicomweb: bool,
    http_port: int,
    users: dict[str, str] | None,
    modalities: dict[str, tuple[str, int]],
):
    config = {
        "Name": "dicom-router-test",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "DicomAet": ae_title,
        "DicomPort": port,
        "HttpServerEnabled": dicomweb,
        "HttpPort": http_port or 8042,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "DicomAlwaysAllowGet": True,
        "DicomCheckCalledAet": False,
        "DicomScpTimeout": 30,
        "DicomModalities": {aet.lower(): [aet, host, p] for aet, (host, p) in modalities.items()},
    }
    (directory / "orthanc.json").write_text(json.dumps(config, indent=2))
    log_path = directory / "orthanc.log"
    process = subprocess.Popen(
        [ORTHANC, str(directory / "orthanc.json")],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        env=dcmtk_env(),
    )
    return process, log_path


def start_dcmqrscp(directory: Path, ae_title: str = "DCMQRSCP", files: list[Path] = ()) -> Upstream:
    """DCMTK dcmqrscp serving ``files`` (indexed with dcmqridx) from one read-only storage area."""
    storage = directory / "db"
    storage.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, storage / f"{i:05d}.dcm")
    if files:
        subprocess.run(
            [dcmtk("dcmqridx"), str(storage), *sorted(str(p) for p in storage.glob("*.dcm"))],
            check=True,
            env=dcmtk_env(),
            capture_output=True,
            timeout=120,
        )
    port = free_port()
    (directory / "dcmqrscp.cfg").write_text(f"""
NetworkTCPPort  = {port}
MaxPDUSize      = 16384
MaxAssociations = 16
HostTable BEGIN
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
{ae_title}   {storage}   R   (200, 1024mb)   ANY
AETable END
""")
    log_path = directory / "dcmqrscp.log"
    process = subprocess.Popen(
        [dcmtk("dcmqrscp"), "-c", str(directory / "dcmqrscp.cfg"), "-v", str(port)],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        env=dcmtk_env(),
    )
    wait_for_port(port, 30)
    return Upstream(ae_title, port, process, log_path)


def load(upstream: Upstream, files: list[Path]) -> None:
    result = storescu(upstream.port, files, called=upstream.ae_title, calling="LOADER")
    assert result.returncode == 0, result.stderr
