"""dicom-router against Orthanc used as a router, on the same generated data, interleaved.

Run by hand (never in CI):

    python benchmarks/versus_orthanc.py [--reps 3] [--workdir /tmp/dicom-router-bench]

Orthanc (Debian ``orthanc``) runs as a subprocess with its own storage on this disk, a Lua
``OnStoredInstance`` that calls ``SendToModality``, and ``TCP_NODELAY=1`` in its
environment. (Adding ``Delete(instanceId)`` after the send, so Orthanc keeps nothing,
made it about 3.5x slower here; the table uses the faster form.) dicom-router runs ``serve`` with one ``dimse``
backend and durable acknowledgements. Each set is timed from the first sender's spawn to
the last file written by DCMTK ``storescp`` at the destination:

- ``ct``: 200 x 0.5 MB CT instances, one storescu;
- ``small``: 1000 x 10 KB instances, one storescu;
- ``ct-4``: 4 storescu at once, 50 CT instances each.

Prints a Markdown table; JSON goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
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

from benchmarks.forward import (  # noqa: E402
    ensure_data,
    interleaved,
    peak_rss_mib,
    routed,
    start_storescp,
    timed_transfer,
)
from tests.support.dicomgen import write_series  # noqa: E402
from tests.support.peers import dcmtk_env, free_port, wait_for_port  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'dest')
end
"""


def data_sets(workdir: Path) -> dict[str, list[Path]]:
    ct = ensure_data(workdir, "ct", 200)
    small = ensure_data(workdir, "small", 1000)
    four = workdir / "data-ct-4x50"
    if not four.exists():
        for i in range(4):
            write_series(four / f"sender{i}", 50, "ct", patient=f"CT4S{i}", seed=1000 * i)
    return {"ct": [ct], "small": [small], "ct-4": sorted(p for p in four.iterdir() if p.is_dir())}


def count(folders: list[Path]) -> int:
    return sum(len(list(f.glob("*.dcm"))) for f in folders)


def via_orthanc(folders: list[Path], scratch: Path) -> dict:
    dest_port, port = free_port(), free_port()
    scp = start_storescp(scratch / "out", dest_port)
    (scratch / "route.lua").write_text(LUA)
    config = {
        "Name": "orthanc-router",
        "StorageDirectory": str(scratch / "storage"),
        "IndexDirectory": str(scratch / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpServerEnabled": False,
        "Plugins": [],
        "LuaScripts": [str(scratch / "route.lua")],
        "DicomCheckCalledAet": False,
        "DicomModalities": {"dest": ["DEST", "127.0.0.1", dest_port]},
    }
    (scratch / "orthanc.json").write_text(json.dumps(config))
    log = open(scratch / "orthanc.log", "wb")
    orthanc = subprocess.Popen(
        [ORTHANC, str(scratch / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**dcmtk_env(), "TCP_NODELAY": "1"},
    )
    try:
        wait_for_port(port, 60)
        result = timed_transfer(port, "ORTHANC", folders, scratch / "out", count(folders))
        return {**result, "peak_rss_mib": peak_rss_mib(orthanc.pid)}
    finally:
        orthanc.terminate()
        orthanc.wait(60)
        log.close()
        scp.terminate()
        scp.wait()


def via_router(folders: list[Path], scratch: Path, receive_processes: int = 1) -> dict:
    return routed(folders, count(folders), scratch, receive_processes=receive_processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dicom-router-bench"))
    parser.add_argument("--sets", default="ct,small,ct-4")
    parser.add_argument(
        "--receive-processes",
        type=int,
        default=1,
        help="also run the router with this many receiving processes (router.receive_processes)",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sets = data_sets(args.workdir)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "command": " ".join(["python", "benchmarks/versus_orthanc.py", *sys.argv[1:]]),
        "sets": {},
    }
    for name in args.sets.split(","):
        folders = sets[name]
        paths = [
            ("orthanc", lambda scratch, f=folders: via_orthanc(f, scratch)),
            ("dicom-router", lambda scratch, f=folders: via_router(f, scratch)),
        ]
        if args.receive_processes > 1:
            paths.append(
                (
                    f"dicom-router x{args.receive_processes}",
                    lambda scratch, f=folders: via_router(f, scratch, args.receive_processes),
                )
            )
        runs = interleaved(paths, args.reps, args.workdir, name, count(folders))
        results["sets"][name] = {"count": count(folders), "runs": runs}
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"versus-orthanc-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def render(results: dict) -> str:
    lines = [
        "| set | router | instances/s (median, min-max) | ratio to Orthanc | peak RSS | CPU stolen per run |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in results["sets"].items():
        rate = {k: [s["count"] / r["seconds"] for r in v] for k, v in s["runs"].items()}
        med = {k: statistics.median(v) for k, v in rate.items()}
        for label in s["runs"]:
            rss = max(r["peak_rss_mib"] for r in s["runs"][label])
            ratio = "" if label == "orthanc" else f"{med[label] / med['orthanc']:.2f}"
            stolen = [r.get("steal_seconds", 0.0) for r in s["runs"][label]]
            lines.append(
                f"| {name} ({s['count']}) | {label} | {med[label]:.0f} ({min(rate[label]):.0f}-"
                f"{max(rate[label]):.0f}) | {ratio} | {rss:.0f} MiB | {min(stolen):.2f}-{max(stolen):.2f} s |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
