"""DICOMweb throughput: the router against Orthanc's own DICOMweb, and against itself over DIMSE.

Run by hand (never in CI):

    python benchmarks/dicomweb.py [--reps 3] [--workdir /tmp/dicom-router-bench] [--sets stow-ct,...]

Sets, each run interleaved ``--reps`` times on the same generated data:

- ``stow-ct`` / ``stow-small``: STOW-RS ingest of 200 CT (0.5 MB) or 1000 small (10 KB)
  instances, 10 instances per request, 4 requests at a time (one aiohttp client for both);
  ``stow-ct-1`` / ``stow-small-1``: the same one instance per request, one request at a time
  (as a simple uploader sends them).
  The router acknowledges each request once its instances are durable and queued (its one
  backend is down, so nothing is sent meanwhile); Orthanc (Debian ``orthanc`` with
  ``orthanc-dicomweb``) once it stored them.
- ``dimse-to-stow`` against ``dimse-to-dimse``: one DCMTK ``storescu`` sends 200 CT instances to
  the router, which forwards them by STOW-RS to a sink that writes each part to a file
  (``benchmarks/stow_sink.py``, its own process), or by C-STORE to DCMTK ``storescp``; timed
  until the last file is written.
- ``wado``: WADO-RS of one 200-instance CT study, read to the end by an aiohttp client, from
  the router (fetching it from Orthanc by C-GET) and from Orthanc's own WADO-RS, asked for
  as stored (``transfer-syntax=*``) and without a transfer syntax (PS3.18's default,
  Explicit VR Little Endian, which Orthanc re-encodes each instance to). For scale, DCMTK
  ``getscu --ignore`` fetching the same study from Orthanc by C-GET (what bounds the router).

Each run also records the CPU time it cost each process taking part (from ``/proc``: the
router's processes, Orthanc; the client's from ``os.times()`` of this process and its finished
children, such as ``storescu`` and ``getscu``), printed per instance beside the rate.

Prints a Markdown table; JSON goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from pydicom import dcmread  # noqa: E402

from benchmarks.forward import (  # noqa: E402
    cpu_seconds,
    ensure_data,
    interleaved,
    peak_rss_mib,
    routed,
    router_tree,
    run_storescu,
    wait_for_files,
)
from tests.conftest import dimse_backend_toml, endpoint_section, router_section  # noqa: E402
from tests.support.cli import router_command  # noqa: E402
from tests.support.dicomweb import dicomweb_endpoint_toml  # noqa: E402
from tests.support.pacs import load, start_orthanc  # noqa: E402
from tests.support.peers import dcmtk, dcmtk_env, free_port, wait_for, wait_for_port  # noqa: E402

STOW_SHAPES = {"": (10, 4), "-1": (1, 1)}  # set suffix -> (instances per request, requests at a time)


def client_cpu_seconds() -> float:
    """CPU seconds of this process (the aiohttp client) and of its children waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _group_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


class CpuMeter:
    """The CPU seconds each group of processes (and the client) spends from now to :meth:`result`."""

    def __init__(self, **groups: list[int]):
        self.groups = groups
        self.start = {name: _group_seconds(pids) for name, pids in groups.items()}
        self.client = client_cpu_seconds()

    def result(self) -> dict:
        spent = {name: _group_seconds(pids) - self.start[name] for name, pids in self.groups.items()}
        return {"cpu_seconds": {**spent, "client": client_cpu_seconds() - self.client}}


async def stow_all(url: str, files: list[Path], per_request: int = 10, concurrent: int = 4) -> None:
    """POST ``files`` to ``url``/studies, ``per_request`` a request, ``concurrent`` requests at a time."""
    groups = [files[i : i + per_request] for i in range(0, len(files), per_request)]
    queue: asyncio.Queue = asyncio.Queue()
    for group in groups:
        queue.put_nowait(group)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            group = queue.get_nowait()
            with aiohttp.MultipartWriter("related", boundary="benchmark") as body:
                body.headers["Content-Type"] = 'multipart/related; type="application/dicom"; boundary=benchmark'
                for path in group:
                    body.append(path.read_bytes(), {"Content-Type": "application/dicom"})
            async with session.post(f"{url}/studies", data=body, headers={"Accept": "application/dicom+json"}) as rsp:
                await rsp.read()
                if rsp.status != 200:
                    raise RuntimeError(f"STOW-RS answered {rsp.status}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrent)))


AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT_SYNTAX = 'multipart/related; type="application/dicom"'


async def read_study(url: str, accept: str = AS_STORED) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Accept": accept}) as rsp:
            if rsp.status != 200:
                raise RuntimeError(f"WADO-RS answered {rsp.status}")
            total = 0
            while chunk := await rsp.content.read(1 << 20):
                total += len(chunk)
            return total


def start_router(scratch: Path, text: str, port: int) -> subprocess.Popen:
    config = scratch / "router.toml"
    config.write_text(text)
    log = open(scratch / "router.log", "wb")
    router = subprocess.Popen([*router_command(), "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, 30)
    wait_for(lambda: b'"delivery started"' in (scratch / "router.log").read_bytes(), 60, message="delivery")
    return router


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(60)


def stow_into_router(files: list[Path], scratch: Path, shape: tuple[int, int]) -> dict:
    web = free_port()
    text = (
        router_section(scratch / "data")
        + dicomweb_endpoint_toml("web", web)
        + dimse_backend_toml(free_port(), "LATER", "later")
        + """
[pipelines.web]
endpoints = ["web"]
backends = ["later"]
"""
    )
    router = start_router(scratch, text, web)
    try:
        meter = CpuMeter(router=router_tree(router.pid))
        t0 = time.monotonic()
        asyncio.run(stow_all(f"http://127.0.0.1:{web}/dicom-web", files, *shape))
        seconds = time.monotonic() - t0
        peak = max(peak_rss_mib(p) for p in router_tree(router.pid))
        return {"seconds": seconds, "peak_rss_mib": peak, **meter.result()}
    finally:
        stop(router)


def stow_into_orthanc(files: list[Path], scratch: Path, shape: tuple[int, int]) -> dict:
    orthanc = start_orthanc(scratch / "orthanc", {}, dicomweb=True)
    try:
        meter = CpuMeter(orthanc=[orthanc.process.pid])
        t0 = time.monotonic()
        asyncio.run(stow_all(orthanc.dicomweb_url, files, *shape))
        seconds = time.monotonic() - t0
        return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(orthanc.process.pid), **meter.result()}
    finally:
        orthanc.stop()


def dimse_to_stow(folder: Path, count: int, scratch: Path) -> dict:
    port, sink_port = free_port(), free_port()
    out = scratch / "sink-out"
    sink = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "stow_sink.py"), str(sink_port), str(out)])
    wait_for_port(sink_port, 30)
    text = (
        router_section(scratch / "data")
        + endpoint_section("ingest", port)
        + f"""
[backends.cloud]
type = "dicomweb"
url = "http://127.0.0.1:{sink_port}/dicom-web"

[pipelines.forward]
endpoints = ["ingest"]
backends = ["cloud"]
"""
    )
    router = start_router(scratch, text, port)
    try:
        meter = CpuMeter(router=router_tree(router.pid), sink=[sink.pid])
        t0 = time.monotonic()
        sender = run_storescu(port, "DICOM_ROUTER", folder)
        sender.wait()
        t_end = wait_for_files(out, count)
        peak = max(peak_rss_mib(p) for p in router_tree(router.pid))
        return {"seconds": t_end - t0, "peak_rss_mib": peak, **meter.result()}
    finally:
        stop(router)
        stop(sink)


def wado_setup(workdir: Path, folder: Path):
    router_port = free_port()
    orthanc = start_orthanc(workdir / "wado-orthanc", {"DICOM_ROUTER": ("127.0.0.1", router_port)}, dicomweb=True)
    files = sorted(folder.glob("*.dcm"))
    load(orthanc, files)
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return orthanc, study


def wado_from_router(orthanc, study: str, scratch: Path) -> dict:
    web = free_port()
    text = (
        router_section(scratch / "data")
        + dicomweb_endpoint_toml("web", web)
        + dimse_backend_toml(orthanc.port, orthanc.ae_title, "pacs", 'store = false\nquery = true\nretrieve = "get"')
        + """
[pipelines.web]
endpoints = ["web"]
backends = ["pacs"]
"""
    )
    router = start_router(scratch, text, web)
    try:
        meter = CpuMeter(router=router_tree(router.pid), orthanc=[orthanc.process.pid])
        t0 = time.monotonic()
        size = asyncio.run(read_study(f"http://127.0.0.1:{web}/dicom-web/studies/{study}"))
        return {
            "seconds": time.monotonic() - t0,
            "bytes": size,
            "peak_rss_mib": max(peak_rss_mib(p) for p in router_tree(router.pid)),
            **meter.result(),
        }
    finally:
        stop(router)


def wado_from_orthanc(orthanc, study: str, scratch: Path, accept: str = AS_STORED) -> dict:
    meter = CpuMeter(orthanc=[orthanc.process.pid])
    t0 = time.monotonic()
    size = asyncio.run(read_study(f"{orthanc.dicomweb_url}/studies/{study}", accept))
    seconds = time.monotonic() - t0
    return {"seconds": seconds, "bytes": size, "peak_rss_mib": peak_rss_mib(orthanc.process.pid), **meter.result()}


def getscu_from_orthanc(orthanc, study: str, scratch: Path) -> dict:
    meter = CpuMeter(orthanc=[orthanc.process.pid])
    t0 = time.monotonic()
    subprocess.run(
        [
            dcmtk("getscu"),  # DCMTK's, not pynetdicom's app of the same name that may come first on PATH
            "-q",
            "--ignore",
            "-aec",
            orthanc.ae_title,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(orthanc.port),
        ],
        check=True,
        timeout=600,
        env=dcmtk_env(),
    )
    seconds = time.monotonic() - t0
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(orthanc.process.pid), **meter.result()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dicom-router-bench"))
    parser.add_argument("--sets", default="stow-ct,stow-small,stow-ct-1,stow-small-1,dimse-to-stow,wado")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ct, small = ensure_data(args.workdir, "ct", 200), ensure_data(args.workdir, "small", 1000)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "command": " ".join(["python", "benchmarks/dicomweb.py", *sys.argv[1:]]),
        "sets": {},
    }
    for name in args.sets.split(","):
        if name.startswith("stow-"):
            files = sorted((ct if name.startswith("stow-ct") else small).glob("*.dcm"))
            shape = STOW_SHAPES[name.removeprefix("stow-ct").removeprefix("stow-small")]
            paths = [
                ("orthanc", lambda s, f=files, h=shape: stow_into_orthanc(f, s, h)),
                ("dicom-router", lambda s, f=files, h=shape: stow_into_router(f, s, h)),
            ]
            count = len(files)
        elif name == "dimse-to-stow":
            count = 200
            paths = [
                ("dimse-to-dimse", lambda s, n=count: routed(ct, n, s)),
                ("dimse-to-stow", lambda s, n=count: dimse_to_stow(ct, n, s)),
            ]
        elif name == "wado":
            orthanc, study = wado_setup(args.workdir, ct)
            count = 200
            paths = [
                ("orthanc", lambda s, o=orthanc, u=study: wado_from_orthanc(o, u, s)),
                ("orthanc, default syntax", lambda s, o=orthanc, u=study: wado_from_orthanc(o, u, s, DEFAULT_SYNTAX)),
                ("getscu --ignore, C-GET", lambda s, o=orthanc, u=study: getscu_from_orthanc(o, u, s)),
                ("dicom-router", lambda s, o=orthanc, u=study: wado_from_router(o, u, s)),
            ]
        else:
            raise SystemExit(f"unknown set {name}")
        try:
            results["sets"][name] = {"count": count, "runs": interleaved(paths, args.reps, args.workdir, name, count)}
        finally:
            if name == "wado":
                orthanc.stop()
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"dicomweb-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def render(results: dict) -> str:
    lines = [
        "| set | path | instances/s (median, min-max) | ratio | peak RSS | CPU ms per instance (medians) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in results["sets"].items():
        rate = {k: [s["count"] / r["seconds"] for r in v] for k, v in s["runs"].items()}
        med = {k: statistics.median(v) for k, v in rate.items()}
        first = next(iter(med))
        for label in s["runs"]:
            ratio = "" if label == first else f"{med[label] / med[first]:.2f}"
            rss = max(r["peak_rss_mib"] for r in s["runs"][label])
            lines.append(
                f"| {name} ({s['count']}) | {label} | {med[label]:.0f} ({min(rate[label]):.0f}-"
                f"{max(rate[label]):.0f}) | {ratio} | {rss:.0f} MiB | {cpu_per_instance(s['runs'][label], s['count'])} |"
            )
    return "\n".join(lines)


def cpu_per_instance(runs: list[dict], count: int) -> str:
    """Each process group's median CPU milliseconds per instance over ``runs``, e.g. ``router 1.40, client 0.16``."""
    names = [name for name in runs[0].get("cpu_seconds", {})]
    return ", ".join(
        f"{name} {statistics.median(r['cpu_seconds'][name] for r in runs) / count * 1000:.2f}" for name in names
    )


if __name__ == "__main__":
    main()
