"""Transcoding rate: the router's file-to-file transcoder against DCMTK's command-line tools
(run once per file, as operators script them) and against the codec library alone (the ceiling).

Run by hand (never in CI):

    python benchmarks/transcode.py [--files 20] [--size 512] [--reps 3] [--workdir /tmp/dicom-router-bench]

Sources are ``--files`` single-frame ``--size`` x ``--size`` images (16-bit CT-like noise
over a ramp; 8-bit for JPEG Baseline), compressed by DCMTK where it can (``dcmcjpeg``,
``dcmcjpls``, ``dcmcrle``) and by the router for JPEG 2000 (Debian's DCMTK has no JPEG 2000
codec). Decoding pairs go to Explicit VR Little Endian; encoding pairs from it. Prints a
Markdown table of frames per second (median of ``--reps``); JSON goes to ``benchmarks/results/``.
pydicom is set up as in the router's processes (:func:`router.engine.configure`), for all three;
the router and DCMTK write each output to a new file, as the router does in its spool. Run it with
``--workdir`` on the file system the router's data directory would use (docs/operations.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom import dcmread  # noqa: E402
from pydicom.pixels import get_decoder, get_encoder  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from router import engine  # noqa: E402
from router.transcode.files import transcode_file  # noqa: E402
from router.transcode.frames import PixelFormat  # noqa: E402
from tests.support.images import write_image  # noqa: E402
from tests.support.peers import dcmtk, dcmtk_env  # noqa: E402

DECODE = [  # (source syntax, DCMTK compressor and options, DCMTK decompressor)
    (JPEGBaseline8Bit, ("dcmcjpeg", "+eb"), "dcmdjpeg"),
    (JPEGLosslessSV1, ("dcmcjpeg", "+e1"), "dcmdjpeg"),
    (JPEGLSLossless, ("dcmcjpls",), "dcmdjpls"),
    (JPEG2000Lossless, None, None),
    (RLELossless, ("dcmcrle",), "dcmdrle"),
]
ENCODE = [(JPEG2000Lossless, None), (JPEGLSLossless, ("dcmcjpls",)), (RLELossless, ("dcmcrle",))]


def sources(workdir: Path, files: int, size: int) -> dict[str, list[Path]]:
    """Uncompressed 16-bit and 8-bit images, and each compressed source syntax made from them."""
    made: dict[str, list[Path]] = {}
    for bits in (16, 8):
        folder = workdir / f"transcode-{size}-{bits}"
        folder.mkdir(parents=True, exist_ok=True)
        made[f"plain{bits}"] = []
        for i in range(files):
            path = folder / f"{i:03d}.dcm"
            if not path.exists():
                write_image(path, rows=size, columns=size + i % 2, bits_stored=bits if bits == 8 else 12)
            made[f"plain{bits}"].append(path)
    for syntax, compressor, _ in DECODE:
        plain = made["plain8" if syntax == JPEGBaseline8Bit else "plain16"]
        out = []
        for path in plain:
            target = path.with_suffix(f".{syntax.keyword}.dcm")
            if not target.exists():
                if compressor is None:
                    transcode_file(path, target, syntax)
                else:
                    subprocess.run(
                        [dcmtk(compressor[0]), *compressor[1:], str(path), str(target)], check=True, env=dcmtk_env()
                    )
            out.append(target)
        made[syntax.keyword] = out
    return made


def fresh_outputs(scratch: Path, prefix: str, count: int) -> None:
    """Remove the last repetition's outputs before the clock starts: the router writes every
    transcoded version to a new file, and overwriting one (a truncation, and ext4's writeback
    of a file truncated and rewritten when it is closed) costs more than making it."""
    for i in range(count):
        (scratch / f"{prefix}{i}.dcm").unlink(missing_ok=True)


def router_rate(paths: list[Path], syntax: str, scratch: Path) -> float:
    fresh_outputs(scratch, "r", len(paths))
    start = time.perf_counter()
    for i, path in enumerate(paths):
        transcode_file(path, scratch / f"r{i}.dcm", syntax)
    return len(paths) / (time.perf_counter() - start)


def dcmtk_rate(paths: list[Path], tool: tuple[str, ...], scratch: Path) -> float:
    env = dcmtk_env()
    fresh_outputs(scratch, "d", len(paths))
    start = time.perf_counter()
    for i, path in enumerate(paths):
        subprocess.run([dcmtk(tool[0]), *tool[1:], str(path), str(scratch / f"d{i}.dcm")], check=True, env=env)
    return len(paths) / (time.perf_counter() - start)


def codec_decode_rate(paths: list[Path], syntax: str) -> float:
    """pydicom's decoder on the encapsulated frames already in memory."""
    loaded = [(dcmread(p), PixelFormat.of(dcmread(p, stop_before_pixels=True))) for p in paths]
    decoder = get_decoder(syntax)
    start = time.perf_counter()
    for ds, fmt in loaded:
        for _ in decoder.iter_array(ds.PixelData, **fmt.options(), as_rgb=True):
            pass
    return len(paths) / (time.perf_counter() - start)


def codec_encode_rate(paths: list[Path], syntax: str) -> float:
    """pydicom's encoder on arrays already in memory."""
    loaded = [(dcmread(p).pixel_array, PixelFormat.of(dcmread(p, stop_before_pixels=True))) for p in paths]
    encoder = get_encoder(syntax)
    start = time.perf_counter()
    for array, fmt in loaded:
        options = fmt.options()
        del options["pixel_keyword"]
        encoder.encode(array, **options)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dicom-router-bench"))
    args = parser.parse_args()
    engine.configure()  # pydicom's settings as in the router's processes (values read unvalidated)
    made = sources(args.workdir, args.files, args.size)
    scratch = args.workdir / "transcode-out"
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    for syntax, _, decompressor in DECODE:
        paths = made[syntax.keyword]
        runs = {"router": [], "dcmtk": [], "codec": []}
        for _ in range(args.reps):
            runs["router"].append(router_rate(paths, ExplicitVRLittleEndian, scratch))
            if decompressor:
                runs["dcmtk"].append(dcmtk_rate(paths, (decompressor,), scratch))
            runs["codec"].append(codec_decode_rate(paths, syntax))
        rows.append((f"decode {syntax.keyword}", runs))
    for syntax, compressor in ENCODE:
        paths = made["plain16"]
        runs = {"router": [], "dcmtk": [], "codec": []}
        for _ in range(args.reps):
            runs["router"].append(router_rate(paths, syntax, scratch))
            if compressor:
                runs["dcmtk"].append(dcmtk_rate(paths, compressor, scratch))
            runs["codec"].append(codec_encode_rate(paths, syntax))
        rows.append((f"encode {syntax.keyword}", runs))
    print(
        f"| pair ({args.files} frames of {args.size} x {args.size}) | router | DCMTK, one run per file | codec alone | router/DCMTK | codec/router |"
    )
    print("|---|---|---|---|---|---|")
    results = {}
    for name, runs in rows:
        med = {k: statistics.median(v) if v else None for k, v in runs.items()}
        results[name] = runs
        dcmtk_text = f"{med['dcmtk']:.0f}" if med["dcmtk"] else "n/a"
        ratio = f"{med['router'] / med['dcmtk']:.2f}" if med["dcmtk"] else ""
        print(
            f"| {name} | {med['router']:.0f} | {dcmtk_text} | {med['codec']:.0f} | {ratio} | {med['codec'] / med['router']:.2f} |"
        )
    out = ROOT / "benchmarks" / "results" / f"transcode-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "frames_per_second": results}, indent=1)
    )


if __name__ == "__main__":
    main()
