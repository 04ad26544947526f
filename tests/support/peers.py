"""Real DICOM peers for tests: an in-process pynetdicom storage SCP, DCMTK subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from router import engine
from router.engine.application_entity import RouterAE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    def connectable():
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(connectable, timeout, message=f"port {port} to accept connections")


class StorageSCP:
    """A storage SCP that files each instance as ``<SOPInstanceUID>.dcm``: an AE of the router's
    engine, which accepts any storage class.

    ``status`` is what it answers; ``transfer_syntaxes`` limits what it accepts
    (default: anything, as sent).
    """

    def __init__(
        self,
        directory: Path,
        ae_title: str = "STORE_SCP",
        status: int = 0x0000,
        transfer_syntaxes: list[str] | None = None,
        port: int | None = None,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.status = status
        self.transfer_syntaxes = transfer_syntaxes
        self.port = port or free_port()
        self.received: list[str] = []
        self.calling_aets: list[str] = []
        self._lock = threading.Lock()
        self.server = None

    def start(self) -> StorageSCP:
        engine.configure()
        ae = RouterAE(self.ae_title)
        ae.maximum_pdu_size = 1048576
        if self.transfer_syntaxes:
            for cx in AllStoragePresentationContexts:
                ae.add_supported_context(cx.abstract_syntax, self.transfer_syntaxes)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        self._restricted = bool(self.transfer_syntaxes)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server = None

    def _on_store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        target = self.directory / f"{uid}.dcm"
        if self.status in (0x0000,) or self.status >= 0xB000 and self.status < 0xC000:
            shutil.copyfile(event.dataset_path, target)
        with self._lock:
            self.received.append(uid)
            self.calling_aets.append(event.assoc.requestor.ae_title)
        return self.status

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


DCMTK_DIRS = ("/usr/bin", "/usr/local/bin")


def dcmtk(tool: str) -> str:
    """The path of a DCMTK tool. pynetdicom installs Python apps with the same names
    (storescu, storescp, ...) that may come first on PATH, so look in the system dirs."""
    for directory in DCMTK_DIRS:
        candidate = os.path.join(directory, tool)
        if os.access(candidate, os.X_OK):
            with open(candidate, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    return candidate
    raise FileNotFoundError(f"DCMTK's {tool} is not installed (apt-get install dcmtk)")


def dcmtk_env() -> dict:
    return {**os.environ, "TCP_NODELAY": "1"}


def start_restricted_storescp(
    directory: Path, port: int, sop_classes, syntaxes, ae_title: str = "STORESCP"
) -> subprocess.Popen:
    """DCMTK storescp accepting ``sop_classes`` in ``syntaxes`` only (UIDs), through an
    association configuration file (``-xf``): nothing else is accepted."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["[[TransferSyntaxes]]", "[Only]"]
    lines += [f"TransferSyntax{i} = {uid}" for i, uid in enumerate(syntaxes, 1)]
    lines += ["", "[[PresentationContexts]]", "[Only]"]
    lines += [f"PresentationContext{i} = {uid}\\Only" for i, uid in enumerate(sop_classes, 1)]
    lines += ["", "[[Profiles]]", "[Only]", "PresentationContexts = Only", ""]
    config = directory.parent / f"{directory.name}-storescp.cfg"
    config.write_text("\n".join(lines))
    return start_storescp(directory, port, ae_title, ["-xf", str(config), "Only"])


def start_storescp(
    directory: Path, port: int, ae_title: str = "STORESCP", extra: list[str] | None = None
) -> subprocess.Popen:
    """DCMTK storescp, bit-preserving, one file per instance named by SOP instance UID."""
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            dcmtk("storescp"),
            "-aet",
            ae_title,
            "+B",
            "-uf",
            "-pdu",
            "131072",
            *(extra or []),
            "-od",
            str(directory),
            str(port),
        ],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_port(port)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def storescu(
    port: int,
    paths: list[Path | str],
    called: str = "DICOM_ROUTER",
    calling: str = "STORESCU",
    extra: list[str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    cmd = [dcmtk("storescu"), "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)


def c_store(port: int, path: Path | str, syntax: str, calling: str = "MODALITY", called: str = "DICOM_ROUTER") -> int:
    """C-STORE one file in ``syntax`` (its own SOP class) with a pynetdicom AE; the status."""
    from pydicom import dcmread

    ae = AE(calling)
    ae.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def have_dcmtk() -> bool:
    try:
        dcmtk("storescu"), dcmtk("storescp")
    except FileNotFoundError:
        return False
    return True
