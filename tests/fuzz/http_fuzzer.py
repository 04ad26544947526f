"""A scripted mutator of HTTP traffic to a ``dicomweb`` endpoint, run against a ``dicom-router serve``
subprocess.

Each case opens a connection and sends a request, mutated (bytes flipped, inserted, cut or
repeated, Content-Length rewritten, a chunked body with wrong sizes, the boundary or content
type changed, header lines repeated, a part's header line garbled, random bytes): a STOW-RS request of a small instance, a
QIDO-RS search, a WADO-RS retrieval of metadata, or of frames. Every ``canary_every`` cases a real instance is
stored by STOW-RS (it must get 200 and reach the archive) and a C-ECHO goes to the DIMSE
endpoint beside it. The run fails on any 500 answer (an error no handler expected), a dead
router, threads or descriptors that do not come back, a traceback or a non-JSON stderr line,
or a canary that did not arrive. The baseline is taken after a first round of cases: the
endpoint's query/retrieve pool keeps the threads that round made (up to its bound, 32), which
is not a leak; a leak keeps growing with the second round.

CI runs a bounded number of cases (``tests/e2e/test_fuzz.py``); by hand::

    python -m tests.fuzz.http_fuzzer --cases 20000 --seed 7
"""

from __future__ import annotations

import functools
import io
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.dimse_fuzzer import Run, resources, run_from_command_line, settle
from tests.support.dicomweb import BOUNDARY, multipart_related, stow_content_type

STOW_PATH = "/dicom-web/studies"


def requests(instance: bytes, rng: random.Random) -> bytes:
    """One unmutated request of a random kind."""
    kind = rng.randrange(5)
    if kind == 0:
        body = multipart_related([instance])
        return (
            f"POST {STOW_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {stow_content_type()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    if kind == 1:
        body = multipart_related([instance])
        chunks = b"".join(
            f"{len(body[i : i + 700]):x}\r\n".encode() + body[i : i + 700] + b"\r\n" for i in range(0, len(body), 700)
        )
        return (
            (
                f"POST {STOW_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {stow_content_type()}\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + chunks
            + b"0\r\n\r\n"
        )
    if kind == 2:
        params = rng.choice(
            [
                "PatientID=P*",
                "limit=5&offset=2",
                "includefield=all",
                "StudyDate=20200101-",
                "00100010=A%5EB",
                "limit=-1",
                "Modality=CT&Modality=MR",
                "%ff%fe=1",
            ]
        )
        return f"GET /dicom-web/studies?{params} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    study, series, sop = _uids(instance) if rng.random() < 0.5 else ("1.2.3", "1.2.4", f"1.2.{rng.randrange(10**6)}")
    if kind == 3:
        return f"GET /dicom-web/studies/{study}/metadata HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    frames = rng.choice(["1", "1,1", "3,1,2", "0", "x", "1,,2", "9" * 30, ",".join(["1"] * 500)])
    accept = rng.choice(
        [
            'multipart/related; type="application/octet-stream"',
            'multipart/related; type="image/jls"; transfer-syntax=*',
            'multipart/related; type="*/*"',
            "image/png",
            "*/*;q=0",
        ]
    )
    path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/{frames}"
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n".encode()


@functools.cache
def _uids(instance: bytes) -> tuple[str, str, str]:
    """The instance's Study, Series and SOP Instance UIDs (the archive behind the router holds it)."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(instance), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(9)
        at = rng.randrange(len(data)) if data else 0
        if how == 0 and data:
            data[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif how == 2:
            del data[at : at + rng.randint(1, 64)]
        elif how == 3:
            data = data[: rng.randrange(len(data) + 1)]
        elif how == 4:
            data = bytearray(
                bytes(data).replace(
                    b"Content-Length: ", f"Content-Length: {rng.randrange(10**7)}".encode() + b"\r\nX-Old: ", 1
                )
            )
        elif how == 5:
            data = bytearray(bytes(data).replace(BOUNDARY.encode(), b"other", rng.randint(1, 3)))
        elif how == 6:
            end = bytes(data).find(b"\r\n")
            if end > 0:
                data[end:end] = b"\r\nX-Repeated: " + b"a" * rng.randrange(9000)
        elif how == 7:
            data = bytearray(bytes(data).replace(b"application/dicom", b"text/html", 1))
        else:
            data = _garble_a_part_header(data, rng)
    return bytes(data)


def _garble_a_part_header(data: bytearray, rng: random.Random) -> bytearray:
    """The first multipart part's header line with its colon gone, bytes inserted or a space
    before the colon (a line no header parser takes)."""
    body = bytes(data).find(b"\r\n\r\n")
    line = bytes(data).find(b"Content-Type:", body + 4) if body >= 0 else -1
    if line < 0:
        return data
    colon = line + len(b"Content-Type")
    choice = rng.randrange(3)
    if choice == 0:
        del data[colon]
    elif choice == 1:
        data[colon + 4 : colon + 4] = bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 12)))
    else:
        data[colon:colon] = b" "
    return data


def send_case(port: int, data: bytes, wait: float) -> bytes:
    """Send one case; the first line of what came back (empty if nothing did)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(wait)
            return sock.recv(65536).split(b"\r\n", 1)[0]
    except OSError:
        return b""


@dataclass
class HttpReport:
    cases: int = 0
    canaries_sent: list[str] = field(default_factory=list)
    echo_failures: int = 0
    server_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fuzz(
    web: int,
    dimse: int,
    cases: int,
    seed: int,
    instance: bytes,
    canaries: list[Path],
    canary_every: int = 200,
    deadline: float | None = None,
) -> HttpReport:
    from tests.integration.test_bad_input import echo
    from tests.support.dicomweb import post

    rng = random.Random(seed)
    report = HttpReport()
    start = time.monotonic()
    canary_iter = iter(canaries)
    for index in range(cases):
        if deadline is not None and time.monotonic() >= deadline:
            break
        case = (
            mutate(requests(instance, rng), rng)
            if rng.random() < 0.9
            else bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        )
        status = send_case(web, case, wait=0.3)
        if status.startswith(b"HTTP/1.1 500"):
            report.server_errors.append(repr(case[:120]))
        report.cases += 1
        if index % canary_every == canary_every - 1:
            canary = next(canary_iter, None)
            if canary is not None and post(web, STOW_PATH, multipart_related([canary]), stow_content_type())[0] == 200:
                report.canaries_sent.append(canary.name)
            if echo(dimse) != (True, 0):
                report.echo_failures += 1
    report.seconds = time.monotonic() - start
    return report


@dataclass
class HttpRun(Run):
    server_errors: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = super().problems
        if self.server_errors:
            found.append(f"{len(self.server_errors)} answers were 500, e.g. {self.server_errors[0]}")
        return found


def give_fixed_uids(path: Path, seed: int) -> None:
    """Give the instance the cases are made from UIDs that depend on ``seed`` alone, so that a
    seed makes the same cases on every run (UIDs of other lengths move every later mutation)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(path)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=[f"http-fuzzer {seed} {keyword}"]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def fuzz_a_router(work: Path, cases: int, seed: int, deadline: float | None = None) -> HttpRun:
    from router import engine
    from tests.conftest import QUERY_AND_GET, dimse_backend_toml, endpoint_section, router_section
    from tests.support.cli import ServeProcess
    from tests.support.dicomgen import write_series
    from tests.support.dicomweb import dicomweb_endpoint_toml, post
    from tests.support.peers import free_port
    from tests.support.qrpeer import ScriptedPACS

    engine.configure()
    canaries = write_series(work / "canaries", cases // 200 + 2, "small", patient="CANARY")
    give_fixed_uids(canaries[0], seed)
    web, dimse = free_port(), free_port()
    config = work / "router.toml"
    pacs = ScriptedPACS(canaries[:1], "FUZZ_QR").__enter__()  # WADO-RS metadata and frames of canaries[0]
    config.write_text(
        router_section(work / "data")
        + dicomweb_endpoint_toml("web", web, "header_timeout = 2\nrequest_timeout = 5\nmax_pending = 256")
        + endpoint_section("ingest", dimse)
        + f"""
[backends.archive]
type = "filesystem"
path = "archive"
{dimse_backend_toml(pacs.port, "FUZZ_QR", "qr", QUERY_AND_GET)}
[pipelines.default]
endpoints = ["web", "ingest"]
backends = ["archive", "qr"]
"""
    )
    serve = ServeProcess(config, work / "serve.log").start(web)
    try:
        assert post(web, STOW_PATH, multipart_related(canaries[-1:]), stow_content_type())[0] == 200
        time.sleep(0.5)
        started = resources(serve.pid)
        fuzz(web, dimse, min(cases // 3, 500), seed + 1, canaries[0].read_bytes(), [], deadline=deadline)
        baseline = settle(serve.pid, started, 30)  # the bounded worker pools as the cases grow them
        report = fuzz(web, dimse, cases, seed, canaries[0].read_bytes(), canaries[1:-1], deadline=deadline)
        after = settle(serve.pid, baseline, 30)
        alive = serve.proc.poll() is None
        archived = lambda: len(list((work / "archive").rglob("*.dcm")))  # noqa: E731
        end = time.monotonic() + 60
        while archived() < len(report.canaries_sent) + 1 and time.monotonic() < end:
            time.sleep(0.2)
        delivered = archived()
    finally:
        stop_code = serve.stop()
        pacs.__exit__(None, None, None)
    return HttpRun(
        report, baseline, after, alive, delivered, serve.log_text(), stop_code, server_errors=report.server_errors
    )


def main(argv: list[str] | None = None) -> int:
    return run_from_command_line(fuzz_a_router, __doc__, "http-fuzz-", argv)


if __name__ == "__main__":
    sys.exit(main())
