"""Many concurrent associations: how fast they open, and what they cost while idle.

Run by hand (never in CI):

    python benchmarks/associations.py [--associations 1000] [--idle-seconds 10] [--settle-seconds 6]

Starts ``dicom-router serve`` on a filesystem backend, opens ``--associations``
associations from one raw-socket client one after another (each waits for its
A-ASSOCIATE-AC) and keeps them all open. Prints the time per hundred, then the receiving
process's CPU over ``--idle-seconds`` of idleness, first right after the last association
opened and again after ``--settle-seconds`` (the reactors' waits have grown by then).
Releases them all and stops the router.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.forward import cpu_seconds  # noqa: E402
from tests.conftest import router_toml  # noqa: E402
from tests.support import pdus  # noqa: E402
from tests.support.cli import ServeProcess  # noqa: E402
from tests.support.peers import free_port  # noqa: E402

BACKENDS = '\n[backends.archive]\ntype = "filesystem"\npath = "archive"\n'


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core process ``pid`` used over the next ``seconds``."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def open_association(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(pdus.associate_rq())
    answer = pdus.read_pdu(sock, 60)
    if answer is None or answer[0] != pdus.A_ASSOCIATE_AC:
        raise SystemExit(f"no A-ASSOCIATE-AC: {answer}")
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=6.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="dicom-router-assocs-"))
    port = free_port()
    config = workdir / "router.toml"
    config.write_text(
        router_toml(
            workdir / "data",
            port,
            BACKENDS,
            ["archive"],
            endpoint_extra=f"max_associations = {args.associations}\nnetwork_timeout = 3600",
        )
    )
    serve = ServeProcess(config, workdir / "serve.log").start(port)
    held: list[socket.socket] = []
    try:
        print("| associations open | seconds for the last 100 |\n|---|---|")
        started = time.monotonic()
        lap = started
        for n in range(1, args.associations + 1):
            held.append(open_association(port))
            if n % 100 == 0:
                now = time.monotonic()
                print(f"| {n} | {now - lap:.2f} |", flush=True)
                lap = now
        print(f"\nall {len(held)} open in {time.monotonic() - started:.1f} s")
        print(f"receiving process, idle, at once: {100 * cpu_share(serve.pid, args.idle_seconds):.1f} % of a core")
        time.sleep(args.settle_seconds)
        print(f"receiving process, idle, settled: {100 * cpu_share(serve.pid, args.idle_seconds):.1f} % of a core")
        for sock in held:
            sock.sendall(pdus.release_rq())
        for sock in held:
            pdus.read_pdu(sock, 60)
    finally:
        for sock in held:
            sock.close()
        serve.stop()


if __name__ == "__main__":
    main()
