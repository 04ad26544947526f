"""Forwarding throughput: DCMTK storescu -> dicom-router -> storescp, against storescu -> storescp.

Run by hand (never in CI):

    python benchmarks/forward.py [--ct 200] [--small 1000] [--reps 3] [--workdir /tmp/dicom-router-bench]
                                 [--stages coerce|anonymize]

For each data set (``ct``: ~0.5 MB instances, ``small``: ~10 KB), each repetition runs
the direct path and the routed path on the same files, interleaved. The clock starts when
storescu is spawned and stops when storescp has written the last file (end to end, with
durable acknowledgements in the router). With ``--stages``, a third path runs the router
with that middleware in the pipeline (header rewritten, pixel data spliced). Prints a
Markdown table; JSON goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import dimse_backend_toml, router_toml  # noqa: E402
from tests.support.cli import router_command  # noqa: E402
from tests.support.dicomgen import write_series  # noqa: E402
from tests.support.peers import dcmtk, dcmtk_env, free_port, wait_for, wait_for_port  # noqa: E402


def ensure_data(workdir: Path, kind: str, count: int) -> Path:
    folder = workdir / f"data-{kind}-{count}"
    if not folder.exists() or len(list(folder.glob("*.dcm"))) != count:
        shutil.rmtree(folder, ignore_errors=True)
        write_series(folder / "tmp", count, kind, patient=kind.upper())
        (folder / "tmp").rename(folder.with_suffix(".tmp"))
        folder.with_suffix(".tmp").rename(folder)
    return folder


def start_storescp(out: Path, port: int) -> subprocess.Popen:
    out.mkdir(parents=True)
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "DEST", "-pdu", "131072", "-uf", "+B", "-od", str(out), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc


def wait_for_files(out: Path, count: int, timeout: float = 600) -> float:
    """When ``out`` holds ``count`` files; looks every 10 ms (listing 1000 names every 2 ms
    took a tenth of a core away from what was being measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(os.listdir(out)) >= count:
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"only {len(os.listdir(out))} of {count} files arrived in {out}")


def run_storescu(port: int, called: str, files: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [dcmtk("storescu"), "-aec", called, "-pdu", "131072", "127.0.0.1", str(port), "+sd", str(files)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of process ``pid`` (all its threads) so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def router_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [pid, *map(int, out.split())]


def direct(files: Path, count: int, scratch: Path) -> dict:
    port = free_port()
    scp = start_storescp(scratch / "direct-out", port)
    try:
        t0 = time.monotonic()
        scu = run_storescu(port, "DEST", files)
        t_end = wait_for_files(scratch / "direct-out", count)
        scu.wait()
        return {"seconds": t_end - t0}
    finally:
        scp.terminate()
        scp.wait()


STAGES = {
    "coerce": """
[[pipelines.default.middleware]]
type = "coerce"
operations = [{ set = "StationName", value = "{calling_aet}" }, { delete = ["private"] }]
""",
    "anonymize": """
[[pipelines.default.middleware]]
type = "anonymize"
key_file = "bench.key"
options = ["retain_longitudinal_modified_dates"]
""",
}


def routed(
    files: Path | list[Path], count: int, scratch: Path, stages: str | None = None, receive_processes: int = 1
) -> dict:
    """One storescu per folder in ``files`` -> ``dicom-router serve`` -> storescp, timed end to end."""
    port, dest_port = free_port(), free_port()
    scp = start_storescp(scratch / "routed-out", dest_port)
    config = scratch / "router.toml"
    (scratch / "bench.key").write_text("benchmark-key-not-secret-0123456789\n")
    text = router_toml(
        scratch / "router-data",
        port,
        dimse_backend_toml(dest_port, "DEST", "dest"),
        ["dest"],
        extra=STAGES[stages] if stages else "",
        fast_retry=False,
    )
    config.write_text(
        text.replace("min_free_space_mb = 0", f"min_free_space_mb = 0\nreceive_processes = {receive_processes}")
    )
    log = open(scratch / "router.log", "wb")
    router = subprocess.Popen([*router_command(), "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30)
        wait_for(
            lambda: b'"delivery started"' in (scratch / "router.log").read_bytes(),
            60,
            message="the delivery process to start",
        )
        result = timed_transfer(
            port, "DICOM_ROUTER", files if isinstance(files, list) else [files], scratch / "routed-out", count
        )
        peaks = {pid: peak_rss_mib(pid) for pid in router_tree(router.pid)}
        return {**result, "peak_rss_mib": max(peaks.values()), "rss_by_process": peaks}
    finally:
        router.terminate()
        router.wait(60)
        log.close()
        scp.terminate()
        scp.wait()


def timed_transfer(port: int, called: str, folders: list[Path], out: Path, count: int) -> dict:
    """Start one storescu per folder at once; seconds until all were acknowledged and until ``out`` has all."""
    t0 = time.monotonic()
    senders = [run_storescu(port, called, folder) for folder in folders]
    for sender in senders:
        sender.wait()
    t_acked = time.monotonic()
    t_end = wait_for_files(out, count)
    return {
        "seconds": t_end - t0,
        "ack_seconds": t_acked - t0,
        "storescu_rc": max(sender.returncode for sender in senders),
    }


def interleaved(paths: list, reps: int, workdir: Path, tag: str, instances: int) -> dict:
    """Run every ``(label, run(scratch))`` path ``reps`` times, interleaved, each in a fresh scratch directory.

    Each run starts on a quiet disk: the previous run's files are removed and everything is
    synced first (on a filesystem mounted with ``discard`` the deletes otherwise land in the
    next run's fsyncs). Each result records the CPU time the hypervisor stole from this
    machine during the run (``steal_seconds``, from ``/proc/stat``). Returns each label's
    results in order; prints each repetition's rate as it finishes.
    """
    runs = {label: [] for label, _ in paths}
    for rep in range(reps):
        for label, run in paths:
            scratch = workdir / f"{tag}-{label.replace(' ', '')}-{rep}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            settle()
            stolen = steal_seconds()
            result = run(scratch)
            result["steal_seconds"] = round(steal_seconds() - stolen, 2)
            runs[label].append(result)
            shutil.rmtree(scratch, ignore_errors=True)
            print(
                f"{tag} {label} rep {rep}: {instances / result['seconds']:.0f} instances/s "
                f"(steal {result['steal_seconds']:.2f} s)",
                file=sys.stderr,
            )
    return runs


def settle(seconds: float = 1.0) -> None:
    """Flush every dirty page and pending discard to the disk, then wait a moment."""
    os.sync()
    time.sleep(seconds)


def steal_seconds() -> float:
    """CPU time stolen by the hypervisor so far, all CPUs together (``/proc/stat``; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=int, default=200)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dicom-router-bench"))
    parser.add_argument("--stages", choices=sorted(STAGES), help="also run the router with this middleware")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "processor": platform.processor() or platform.machine(),
        },
        "command": " ".join(["python", "benchmarks/forward.py", *sys.argv[1:]]),
        "sets": {},
    }
    for kind, count in (("ct", args.ct), ("small", args.small)):
        files = ensure_data(args.workdir, kind, count)
        mb = sum(p.stat().st_size for p in files.glob("*.dcm")) / 1e6
        paths = [
            ("direct", lambda scratch, f=files, n=count: direct(f, n, scratch)),
            ("routed", lambda scratch, f=files, n=count: routed(f, n, scratch)),
        ]
        if args.stages:
            paths.append(
                (f"routed+{args.stages}", lambda scratch, f=files, n=count: routed(f, n, scratch, args.stages))
            )
        runs = interleaved(paths, args.reps, args.workdir, kind, count)
        results["sets"][kind] = {"count": count, "megabytes": mb, "runs": runs}
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"forward-{stamp}.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def render(results: dict) -> str:
    lines = [
        "| set | path | instances/s (median, min-max) | MB/s | router/direct | router acks/s | router peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, s in results["sets"].items():
        rate = {n: [s["count"] / r["seconds"] for r in runs] for n, runs in s["runs"].items()}
        med = {n: statistics.median(v) for n, v in rate.items()}
        for name in s["runs"]:
            v = rate[name]
            ratio = f"{med[name] / med['direct']:.2f}" if name != "direct" else ""
            acks = ""
            rss = ""
            if name != "direct":
                acks = f"{statistics.median(s['count'] / r['ack_seconds'] for r in s['runs'][name]):.0f}"
                rss = f"{max(r['peak_rss_mib'] for r in s['runs'][name]):.0f} MiB"
            label = "storescu -> storescp" if name == "direct" else "storescu -> router -> storescp"
            if "+" in name:
                label = f"storescu -> router ({name.split('+')[1]}) -> storescp"
            lines.append(
                f"| {kind} ({s['count']} x {s['megabytes'] / s['count'] * 1000:.0f} KB) | {label} | "
                f"{med[name]:.0f} ({min(v):.0f}-{max(v):.0f}) | {med[name] * s['megabytes'] / s['count']:.1f} | "
                f"{ratio} | {acks} | {rss} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
