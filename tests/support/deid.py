"""Run the anonymize stage on files, as the intake would, for tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage

from router.envelope import AssociationInfo, Command, RequestEnvelope, SpooledInstance
from router.middleware.anonymize import AnonymizeConfig, AnonymizeStage
from router.spool.splice import read_header, write_spliced

KEY_A = "first-test-key-with-enough-bytes\n"
KEY_B = "second-test-key-with-enough-byte\n"


def key_file(directory: Path, text: str = KEY_A, name: str = "deid.key") -> Path:
    path = Path(directory) / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def envelope_for(path: Path, calling: str = "CT01") -> RequestEnvelope:
    header = dcmread(path, stop_before_pixels=True)
    return RequestEnvelope(
        association=AssociationInfo("ingest", "test-assoc", calling, "ROUTER", "127.0.0.1", 40000),
        command=Command(
            "store",
            str(header.get("SOPClassUID", CTImageStorage)),
            1,
            affected_sop_instance_uid=str(header.SOPInstanceUID),
        ),
        instance=SpooledInstance(path, str(header.file_meta.TransferSyntaxUID), path.stat().st_size),
    )


def stage(**config) -> AnonymizeStage:
    config.setdefault("burned_in_annotation", "pass")
    return AnonymizeStage("research.middleware[0](anonymize)", AnonymizeConfig(**config))


def anonymize_files(paths: list[Path], out_dir: Path, **config) -> list[Path]:
    """Anonymize each file into ``out_dir`` (header spliced ahead of the original pixel data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    anonymizer = stage(**config)
    outputs = []
    for path in paths:
        result = anonymizer(envelope_for(path))
        assert isinstance(result, RequestEnvelope), result
        out = out_dir / path.name
        with open(out, "wb") as f:
            write_spliced(path, result.instance.header, result.instance.layout, f)
        outputs.append(out)
    return outputs


def raw_pixel_bytes(path: Path) -> bytes:
    _, layout = read_header(path)
    with open(path, "rb") as f:
        f.seek(layout.pixel_start)
        return f.read(layout.pixel_end - layout.pixel_start)


def pixel_digest(path: Path) -> str:
    """SHA-256 of the raw pixel data element, read in chunks (for instances of any size)."""
    import hashlib

    _, layout = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(layout.pixel_start)
        left = layout.pixel_end - layout.pixel_start
        while left:
            chunk = f.read(min(left, 1 << 20))
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def all_values(ds: Dataset) -> list[str]:
    """Every value in a dataset as text, descending into sequences, file meta included."""
    out = []
    for element in list(getattr(ds, "file_meta", Dataset())) + list(ds):
        if element.VR == "SQ":
            for item in element.value or ():
                out.extend(all_values(item))
        elif isinstance(element.value, bytes):
            continue
        else:
            out.append(str(element.value))
    return out


def have_dciodvfy() -> bool:
    return shutil.which("dciodvfy") is not None


def dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}
