"""A 600 MB instance through DICOMweb with flat memory: STOW-RS in, STOW-RS out, and WADO-RS
out (the instance, and two of its frames), each with every router process under 100 MiB
(issue 19's bound)."""

from __future__ import annotations

import shutil
import subprocess

import psutil
import pytest

from tests.conftest import QUERY_AND_GET, dimse_backend_toml, router_section
from tests.e2e.test_memory_bound import peak_rss_mib, tail_digest
from tests.support.cli import ServeProcess
from tests.support.dicomgen import write_large
from tests.support.dicomweb import BOUNDARY, dicomweb_endpoint_toml, stow_content_type
from tests.support.peers import free_port, wait_for
from tests.support.qrpeer import ScriptedPACS
from tests.support.spool import spooled_files
from tests.support.stowpeer import ScriptedStowServer

SIZE = 600 * 1000 * 1000
LIMIT_MIB = 100

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")]


def peaks_of(serve: ServeProcess) -> dict[int, float]:
    processes = [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(recursive=True)]
    peaks = {p.pid: peak_rss_mib(p.pid) for p in processes}
    print(f"router peak RSS per process (MiB): {peaks}")
    return peaks


def header_of(path) -> tuple[str, str, str, int]:
    """(Study, Series and SOP Instance UIDs, Number of Frames), read in a child process so the
    test's own memory stays small."""
    out = subprocess.run(
        [
            "python3",
            "-c",
            "import sys; from pydicom import dcmread; d = dcmread(sys.argv[1], stop_before_pixels=True); "
            "print(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, d.NumberOfFrames)",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], out[1], out[2], int(out[3])


def curl_get(url: str, out) -> str:
    """GET ``url`` with curl into the file ``out``; the HTTP status."""
    got = subprocess.run(
        ["curl", "-sS", "-o", str(out), "-w", "%{http_code}", url], capture_output=True, text=True, timeout=600
    )
    return got.stdout or got.stderr


def multipart_file(instance, body) -> None:
    """A STOW-RS body holding ``instance``, copied in chunks."""
    with open(body, "wb") as out:
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        with open(instance, "rb") as source:
            shutil.copyfileobj(source, out, 1 << 20)
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())


def test_a_600_mb_instance_by_stow_in_and_out_and_by_wado_out_with_flat_memory(tmp_path, write_config):
    big = write_large(tmp_path / "big.dcm", SIZE)
    body = tmp_path / "body.bin"
    multipart_file(big, body)
    web = free_port()
    received = tmp_path / "received"
    received.mkdir()
    with ScriptedStowServer(lambda uids: (200, {}), keep=received) as cloud, ScriptedPACS([big], "ARCHIVE") as pacs:
        config = write_config(
            router_section(tmp_path / "data")
            + dicomweb_endpoint_toml("web", web)
            + f"""
[backends.cloud]
type = "dicomweb"
url = "{cloud.url}"
{dimse_backend_toml(pacs.port, "ARCHIVE", "archive", QUERY_AND_GET)}
[pipelines.web]
endpoints = ["web"]
backends = ["cloud", "archive"]
"""
        )
        serve = ServeProcess(config, tmp_path / "serve.log").start(web)
        try:
            posted = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-X",
                    "POST",
                    "-T",
                    str(body),
                    "-H",
                    f"Content-Type: {stow_content_type()}",
                    "-w",
                    "%{http_code}",
                    "-o",
                    str(tmp_path / "answer.json"),
                    f"http://127.0.0.1:{web}/dicom-web/studies",
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert posted.stdout == "200", posted.stderr + serve.log_text()[-2000:]
            try:
                wait_for(
                    lambda: list(received.iterdir()) and not spooled_files(tmp_path / "data"),
                    600,
                    message="the STOW-RS delivery: the part at the server, the spool file gone",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the router's log ends: {serve.log_text()[-4000:]}") from None
            (part,) = received.iterdir()
            assert part.stat().st_size == big.stat().st_size and tail_digest(part, 1 << 20) == tail_digest(big, 1 << 20)
            study, series, instance, count = header_of(big)
            fetched = tmp_path / "fetched.bin"
            assert curl_get(f"http://127.0.0.1:{web}/dicom-web/studies/{study}", fetched) == "200"
            assert 0 < fetched.stat().st_size - big.stat().st_size < 4096  # one part: headers and boundaries
            frame_bytes = 512 * 512 * 2
            frames = tmp_path / "frames.bin"
            path = f"/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{count},1"
            assert curl_get(f"http://127.0.0.1:{web}{path}", frames) == "200"
            answer = frames.read_bytes()
            with open(big, "rb") as f:
                f.seek(-frame_bytes, 2)  # write_large: the pixel data ends the file
                last = f.read()
            assert last in answer and 2 * frame_bytes < len(answer) < 2 * frame_bytes + 4096
            peaks = peaks_of(serve)
            assert len(peaks) >= 2 and max(peaks.values()) < LIMIT_MIB, peaks
        finally:
            serve.stop()
