"""CPU per instance of a header-editing stage, in one process: the pipeline and the edited version's write.

Run by hand (never in CI):

    python benchmarks/stage_cpu.py [--stages anonymize|coerce] [--set small|ct] [--files 300] [--reps 3]

The same files as ``benchmarks/forward.py`` (made under ``/tmp/dicom-router-bench`` if
missing), each routed through a pipeline holding the stage (the same configuration as
``forward.py --stages``) and its edited version written to a scratch spool, as the intake
does; no network, no fsync. Prints milliseconds per instance for each repetition, after one
warm-up pass. ``--profile`` prints cProfile's top functions instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.forward import STAGES, ensure_data  # noqa: E402
from router import engine  # noqa: E402
from router.config.loader import load_config  # noqa: E402
from router.envelope import AssociationInfo, Command, RequestEnvelope, SpooledInstance  # noqa: E402
from router.pipeline import PipelineSet  # noqa: E402
from router.spool.splice import read_header_before_pixels  # noqa: E402
from router.spool.store import Spool  # noqa: E402
from tests.conftest import dimse_backend_toml, router_toml  # noqa: E402

COUNTS = {"small": 1000, "ct": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", choices=sorted(STAGES), default="anonymize")
    parser.add_argument("--set", choices=sorted(COUNTS), default="small")
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dicom-router-bench"))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    engine.configure()
    files = sorted(ensure_data(args.workdir, args.set, COUNTS[args.set]).glob("*.dcm"))[: args.files]
    with tempfile.TemporaryDirectory() as scratch:
        one = _instance_writer(Path(scratch), args.stages, files[0])
        _per_instance(one, files)
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(_per_instance, one, files)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
            return
        timings = [_per_instance(one, files) for _ in range(args.reps)]
    print(f"{args.stages}, {args.set}, {len(files)} files: ms per instance", [round(t, 3) for t in timings])


def _instance_writer(scratch: Path, stage: str, sample: Path):
    (scratch / "bench.key").write_text("benchmark-key-not-secret-0123456789\n")
    config_path = scratch / "router.toml"
    config_path.write_text(
        router_toml(
            scratch / "data", 11112, dimse_backend_toml(11113, "DEST", "dest"), ["dest"], extra=STAGES[stage]
        ).replace('key_file = "bench.key"', f'key_file = "{scratch / "bench.key"}"')
    )
    pipelines = PipelineSet(load_config(config_path))
    spool = Spool(scratch / "spool")
    spool.prepare()
    syntax = str(read_header_before_pixels(sample)[0].file_meta.TransferSyntaxUID)
    association = AssociationInfo("ingest", "bench", "STORESCU", "DICOM_ROUTER", "127.0.0.1", 0)

    def one(path: Path) -> None:
        envelope = RequestEnvelope(
            association=association,
            command=Command("store", "", 1, affected_sop_instance_uid=""),
            instance=SpooledInstance(path, syntax, path.stat().st_size),
        )
        version = spool.write_version(pipelines.route(envelope).deliveries[0].envelope.instance)
        if version.file is not None:
            version.file.close()
        version.path.unlink()

    return one


def _per_instance(one, files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        one(path)
    return (time.perf_counter() - start) / len(files) * 1000


if __name__ == "__main__":
    main()
