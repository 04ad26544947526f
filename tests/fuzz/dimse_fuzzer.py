"""A scripted mutator of DICOM upper-layer traffic, run against a ``dicom-router serve`` subprocess.

Each case opens a connection and sends one of five shapes, mutated (bit flips, bytes
inserted, cut or replaced, a length field rewritten, an item repeated, random bytes): an
A-ASSOCIATE-RQ; a valid request then a P-DATA-TF with a C-ECHO command set; a valid request
then a C-STORE command and a data set fragment; a valid request, a C-STORE command and a data
set in several PDUs sent at once, one of them mutated; a valid request then any other PDU. Every
``canary_every`` cases a real instance is stored through pynetdicom and a C-ECHO is sent.
At the end the harness checks that the daemon is alive and still answers C-ECHO, that no
traceback or unhandled thread error was logged, that the router's threads and descriptors
came back to where they were, and that every canary instance was delivered.

CI runs a bounded number of cases (``tests/e2e/test_fuzz.py``); by hand::

    python -m tests.fuzz.dimse_fuzzer --cases 50000 --seed 7
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support import pdus

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _contexts() -> list[bytes]:
    return [pdus.presentation_context(1), pdus.presentation_context(3, CT, (EXPLICIT, pdus.IMPLICIT_VR))]


def valid_request() -> bytes:
    return pdus.associate_rq(calling="FUZZER", contexts=_contexts())


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(8)
        position = rng.randrange(len(out)) if out else 0
        if choice == 0 and out:  # flip a bit
            out[position] ^= 1 << rng.randrange(8)
        elif choice == 1:  # insert bytes
            out[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 2 and out:  # cut bytes
            del out[position : position + rng.randint(1, 32)]
        elif choice == 3 and out:  # replace a byte with an edge value
            out[position] = rng.choice((0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF))
        elif choice == 4 and len(out) >= 6:  # rewrite the PDU length
            out[2:6] = struct.pack(
                ">I", rng.choice((0, 1, 5, len(out), len(out) * 2, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 20)))
            )
        elif choice == 5 and len(out) > 8:  # rewrite a 16-bit length somewhere in the items
            offset = rng.randrange(6, len(out) - 2)
            out[offset : offset + 2] = struct.pack(">H", rng.choice((0, 1, 0xFFFF, rng.randrange(1 << 16))))
        elif choice == 6 and len(out) > 12:  # repeat a slice (an item twice)
            start = rng.randrange(6, len(out) - 4)
            end = min(len(out), start + rng.randint(4, 64))
            out[end:end] = out[start:end]
        else:  # truncate
            del out[rng.randrange(len(out) + 1) :]
    return bytes(out)


def case_bytes(rng: random.Random) -> list[bytes]:
    """The messages of one case, in order; each is sent as it stands."""
    shape = rng.randrange(5)
    if shape == 0:
        return [mutate(valid_request(), rng)]
    if shape == 1:
        return [valid_request(), mutate(pdus.echo_rq(), rng)]
    if shape == 2:
        command = pdus.store_rq_command(CT, "1.2.826.0.1.3680043.8.498.1", context_id=3)
        data = pdus.data_set_fragment(b"\x08\x00\x16\x00UI\x1a\x00" + CT.encode().ljust(26, b"\0"), context_id=3)
        if rng.random() < 0.5:
            return [valid_request(), mutate(command, rng), data]
        return [valid_request(), command, mutate(data, rng)]
    if shape == 3:  # a data set in several PDUs sent at once (read from one peek), one of them mutated
        command = pdus.store_rq_command(CT, "1.2.826.0.1.3680043.8.498.2", context_id=3)
        chunks = [b"\x08\x00\x16\x00UI\x1a\x00" + CT.encode().ljust(26, b"\0")]
        chunks += [rng.randbytes(rng.choice((2, 64, 4096))) for _ in range(rng.randint(2, 8))]
        fragments = [
            pdus.data_set_fragment(chunk, context_id=3, last=index == len(chunks) - 1)
            for index, chunk in enumerate(chunks)
        ]
        victim = rng.randrange(len(fragments))
        fragments[victim] = mutate(fragments[victim], rng)
        return [valid_request(), command, b"".join(fragments)]
    other = rng.choice(
        (pdus.release_rq(), pdus.abort(), pdus.pdu(0x02, b"\0" * 8), pdus.pdu(0x06, b"\0" * 4), pdus.associate_rq())
    )
    return [valid_request(), mutate(other, rng)]


def run_case(port: int, messages: list[bytes], wait: float) -> None:
    """Send the case's messages and read what comes back for at most ``wait`` seconds."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            for message in messages:
                sock.sendall(message)
                if wait:
                    sock.settimeout(wait)
                    try:
                        sock.recv(65536)
                    except OSError:
                        pass
    except OSError:
        pass  # the router closed it first: fine


@dataclass
class Report:
    cases: int = 0
    canaries_sent: list[str] = field(default_factory=list)
    echo_failures: int = 0
    seconds: float = 0.0


def fuzz(
    port: int, cases: int, seed: int, canaries: list[Path], canary_every: int = 250, deadline: float | None = None
) -> Report:
    """Run ``cases`` mutated cases (fewer if the monotonic ``deadline`` passes) with canaries between them."""
    from tests.integration.test_bad_input import echo
    from tests.integration.test_forwarding import send_with_pynetdicom

    rng = random.Random(seed)
    report = Report()
    start = time.monotonic()
    canary_iter = iter(canaries)
    for index in range(cases):
        if deadline is not None and time.monotonic() >= deadline:
            break
        run_case(port, case_bytes(rng), wait=0.02 if rng.random() < 0.2 else 0.0)
        report.cases += 1
        if index % canary_every == canary_every - 1:
            canary = next(canary_iter, None)
            if canary is not None and send_with_pynetdicom(port, [canary], calling="CANARY") == [0]:
                report.canaries_sent.append(canary.name)
            if echo(port) != (True, 0):
                report.echo_failures += 1
    report.seconds = time.monotonic() - start
    return report


def resources(pid: int) -> tuple[int, int]:
    """(threads, open descriptors) of the process ``pid``."""
    process = psutil.Process(pid)
    return process.num_threads(), process.num_fds()


def settle(pid: int, baseline: tuple[int, int], timeout: float, slack: int = 4) -> tuple[int, int]:
    """Wait until the process's threads and descriptors are back near ``baseline``; the last reading."""
    end = time.monotonic() + timeout
    now = resources(pid)
    while time.monotonic() < end:
        now = resources(pid)
        if now[0] <= baseline[0] + slack and now[1] <= baseline[1] + slack:
            break
        time.sleep(0.2)
    return now


@dataclass
class Run:
    """A whole fuzzing run against a router: what the checks need."""

    report: Report
    baseline: tuple[int, int]
    after: tuple[int, int]
    alive: bool
    delivered: int
    log: str
    stop_code: int | None

    @property
    def problems(self) -> list[str]:
        """Everything that makes the run a failure (empty: it passed)."""
        found = []
        if not self.alive:
            found.append("the router died")
        if self.report.echo_failures:
            found.append(f"{self.report.echo_failures} C-ECHO failures")
        if self.delivered < len(self.report.canaries_sent) + 1:
            found.append(f"{self.delivered} of {len(self.report.canaries_sent) + 1} canaries delivered")
        if self.after[0] > self.baseline[0] + 4 or self.after[1] > self.baseline[1] + 4:
            found.append(f"threads/descriptors {self.baseline} -> {self.after}")
        lines = [line for line in self.log.splitlines() if line.strip()]
        if any(not line.startswith("{") for line in lines):
            found.append("stderr carried a line that is not JSON")
        events = [json.loads(line) for line in lines if line.startswith("{")]
        for event in ("a thread ended with an unhandled error", "unhandled error on the HTTP event loop"):
            if any(e.get("event") == event for e in events):
                found.append(event)
        traced = [e for e in events if "Traceback" in e.get("exception", "")]
        if traced:
            last_line = traced[0]["exception"].strip().splitlines()[-1]
            found.append(f"a traceback in the log ({traced[0].get('event')!r}: {last_line[:200]})")
        if self.stop_code != 0:
            found.append(f"the router exited {self.stop_code}")
        return found


def fuzz_a_router(work: Path, cases: int, seed: int, deadline: float | None = None) -> Run:
    """Start ``dicom-router serve`` in ``work``, store a first canary (spares made, queue open:
    the baseline), fuzz it, let it settle, wait for the canaries, stop it."""
    from router import engine
    from tests.conftest import router_toml
    from tests.integration.test_forwarding import send_with_pynetdicom
    from tests.support.cli import ServeProcess
    from tests.support.dicomgen import write_series
    from tests.support.peers import free_port

    engine.configure()
    canaries = write_series(work / "canaries", cases // 250 + 2, "small", patient="CANARY")
    port = free_port()
    config = work / "router.toml"
    config.write_text(
        router_toml(
            work / "data",
            port,
            '[backends.archive]\ntype = "filesystem"\npath = "archive"\n',
            ["archive"],
            endpoint_extra="acse_timeout = 2\nnetwork_timeout = 5\nmax_pending = 256",
        )
    )
    serve = ServeProcess(config, work / "serve.log").start(port)
    try:
        send_with_pynetdicom(port, canaries[-1:], calling="CANARY")
        time.sleep(0.5)
        baseline = resources(serve.pid)
        report = fuzz(port, cases, seed, canaries[:-1], deadline=deadline)
        after = settle(serve.pid, baseline, 30)
        alive = serve.proc.poll() is None
        archived = lambda: len(list((work / "archive").rglob("*.dcm")))  # noqa: E731
        end = time.monotonic() + 60
        while archived() < len(report.canaries_sent) + 1 and time.monotonic() < end:
            time.sleep(0.2)
        delivered = archived()
    finally:
        stop_code = serve.stop()
    return Run(report, baseline, after, alive, delivered, serve.log_text(), stop_code)


def main(argv: list[str] | None = None) -> int:
    return run_from_command_line(fuzz_a_router, __doc__, "dimse-fuzz-", argv)


def run_from_command_line(fuzz_a_router, description: str, prefix: str, argv: list[str] | None = None) -> int:
    """A fuzzer's command line: ``--cases``, ``--seed``, ``--workdir``; prints the run, exits 1 on problems."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    run = fuzz_a_router(args.workdir or Path(tempfile.mkdtemp(prefix=prefix)), args.cases, args.seed)
    print(
        f"{run.report.cases} cases in {run.report.seconds:.1f} s, {run.delivered} canaries delivered, "
        f"threads/descriptors {run.baseline} -> {run.after}; problems: {run.problems or 'none'}"
    )
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
