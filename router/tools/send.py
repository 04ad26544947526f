"""``dicom-router send``: C-STORE (or, to a ``dicomweb`` backend, STOW-RS) files with a progress
bar and a summary.

Folders are walked in name order. Hidden files and folders (a name starting with ``.``)
and files that are not DICOM Part-10 files (no ``DICM`` after the 128-byte preamble: a
``manifest.json``, a README, a DICOMDIR's neighbours) are skipped and counted, not
failed; the command fails only when a DICOM file could not be sent, or when there was no
DICOM file to send at all.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pydicom.errors import InvalidDicomError

from router import engine
from router.backends.status import Outcome
from router.spool.queue import Delivery
from router.spool.splice import read_header_before_pixels
from router.transcode.files import transcode_file
from router.transcode.syntaxes import CannotTranscode, describe


def iter_files(paths: list[Path]):
    """The files named and the files under the folders named, hidden ones left out of folders."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def is_part10(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part-10 file (``DICM`` after the preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return True  # unreadable: reported as a failure by describe_file


def describe_file(path: Path) -> Delivery | str:
    """A delivery for a Part-10 file, or why the file cannot be sent."""
    try:
        meta = read_header_before_pixels(path, only=["SOPInstanceUID"])[0].file_meta
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return f"not a readable DICOM file: {exc}"
    needed = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    missing = [k for k in needed if k not in meta]
    if missing:
        return f"no Part-10 file meta ({', '.join(missing)} missing)"
    return Delivery(
        0,
        0,
        "send",
        None,
        0,
        0.0,
        str(path),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.MediaStorageSOPClassUID),
        str(meta.TransferSyntaxUID),
        None,
        None,
    )


class Progress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.done = total, stream, 0
        self.enabled = stream.isatty()

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def send_paths(backend, paths: list[Path], transfer_syntax: str | None = None) -> bool:
    """Send every DICOM file under ``paths``; print failures and a summary; True if there was
    one to send and all were sent. ``transfer_syntax``: each file is first transcoded into it
    (a scratch copy in a temporary folder, removed once sent; the file itself is never changed)."""
    engine.configure()
    found = list(iter_files(paths))
    files = [path for path in found if is_part10(path)]
    skipped = len(found) - len(files)
    progress = Progress(len(files))
    scu = backend.open_deliverer()
    counts = {"sent": 0, "warning": 0, "failed": 0}
    sent_bytes = 0
    started = time.monotonic()
    scratch = tempfile.TemporaryDirectory(prefix="dicom-router-send-") if transfer_syntax else None
    try:
        for path in files:
            item = describe_file(path)
            if transfer_syntax and scratch and not isinstance(item, str) and item.transfer_syntax != transfer_syntax:
                item = _transcoded(item, path, Path(scratch.name), transfer_syntax)
            if isinstance(item, str):
                counts["failed"] += 1
                _report(progress, path, item)
            else:
                result = scu.deliver(item)
                if result.delivered:
                    counts["warning" if result.outcome is Outcome.WARNING else "sent"] += 1
                    sent_bytes += path.stat().st_size
                    if result.outcome is Outcome.WARNING:
                        _report(progress, path, result.reason)
                else:
                    counts["failed"] += 1
                    _report(progress, path, result.reason)
            progress.step()
            if scratch is not None and not isinstance(item, str) and item.path != str(path):
                os.unlink(item.path)
    finally:
        scu.close()
        progress.finish()
        if scratch is not None:
            scratch.cleanup()
    elapsed = max(time.monotonic() - started, 1e-6)
    print(
        f"{counts['sent']} sent, {counts['warning']} with warnings, {counts['failed']} failed "
        f"to {backend.describe()}: {sent_bytes / 1e6:.1f} MB in {elapsed:.1f} s "
        f"({(counts['sent'] + counts['warning']) / elapsed:.1f} instances/s)"
        + (f"; {skipped} skipped (not DICOM files)" if skipped else "")
    )
    if not files:
        print("no DICOM file to send", file=sys.stderr)
    return counts["failed"] == 0 and bool(files)


def _transcoded(item: Delivery, path: Path, scratch: Path, syntax: str) -> Delivery | str:
    """The delivery of ``path`` transcoded into ``syntax`` in ``scratch``, or why it cannot be."""
    target = scratch / f"{item.sop_instance_uid}.dcm"
    try:
        result = transcode_file(path, target, syntax)
    except (CannotTranscode, OSError) as exc:
        return f"cannot transcode to {describe(syntax)}: {exc}"
    return replace(item, path=str(target), transfer_syntax=syntax, sop_instance_uid=result.sop_instance_uid)


def _report(progress: Progress, path: Path, reason: str) -> None:
    if progress.enabled:
        sys.stderr.write("\n")
    print(f"{path}: {reason}", file=sys.stderr)
