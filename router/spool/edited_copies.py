"""Edited versions kept by reference: a header in the queue, the pixel data in the received file.

An edit that changes only the elements before the pixel data (what the ``anonymize`` and
``coerce`` stages do) leaves the received file's pixel data as it was. The intake then keeps
the version as its header bytes, committed with its queue row, and a range of the received
file (:class:`~router.spool.queue_rows.EditedByReference`): acknowledging it costs no second copy of
the pixel data and no fsync of a second file.

Delivery writes the whole version, header then the received file's range, at the path the
queue row names (:func:`edited_copy_path`, beside the received file) just before its first
attempt, to a temporary name renamed into place, so a copy that exists is whole. The copy
is not fsynced: it can be written again from what is durable, and the start-up sweep removes
every copy a crash left behind. It goes with its queue row, and the received file once no
row names it.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path

from router.spool.queue_rows import EditedByReference
from router.spool.splice import Layout, copy_range, write_spliced

_COPY_NAME = re.compile(r".+\.dcm\.edit\d+\.dcm")
MAX_HEADER_BYTES = 256 * 1024
"""A larger edited header is written out as a whole file instead (the queue's rows stay small)."""
MIN_PIXEL_BYTES = 64 * 1024
"""An edited version with less pixel data is written out whole: a second small file costs the
intake less than the copy delivery would write (docs/benchmarks.md)."""


def edited_by_reference(version, source: str, source_size: int, checksum: str) -> EditedByReference | None:
    """The edited ``version`` of the received file ``source`` (``source_size`` bytes with
    ``checksum``; a :class:`~router.envelope.SpooledInstance`) kept by reference, when its pixel
    data, not too small, runs on unchanged to the end of the received file with nothing after
    it, and its header is not too large; else None (it is written out whole).

    The header's bytes are those the stage encoded (the element-stream way), or what
    :func:`~router.spool.splice.write_spliced` writes before the pixel data (the data set way).
    """
    encoded = version.encoded
    layout = encoded.layout if encoded is not None else version.layout
    if layout.pixel_start is None or layout.deflated or layout.size != source_size:
        return None
    if source_size - layout.pixel_start < MIN_PIXEL_BYTES:
        return None
    if encoded is not None:
        header = encoded.preamble + b"DICM" + encoded.meta + encoded.body
    elif layout.pixel_end == layout.size and _nothing_after_pixel_data(version.header, layout):
        out = io.BytesIO()
        write_spliced(source, version.header, layout, out, pixel_data=_no_pixel_data)
        header = out.getvalue()
    else:
        return None
    if len(header) > MAX_HEADER_BYTES:
        return None
    return EditedByReference(header, source, layout.pixel_start, source_size, checksum)


def _nothing_after_pixel_data(header, layout: Layout) -> bool:
    return layout.pixel_tag is not None and all(int(tag) < layout.pixel_tag for tag in header.keys())


def _no_pixel_data(out) -> None:
    """The pixel data :func:`~router.spool.splice.write_spliced` writes for a header alone: none."""


def edited_copy_path(source: Path | str, index: int) -> str:
    """Where delivery writes the ``index``-th edited version kept by reference to the received file ``source``."""
    return f"{source}.edit{index}.dcm"


def is_edited_copy(name: str) -> bool:
    """Whether a spool file name is that of an edited version's copy (see :func:`edited_copy_path`)."""
    return _COPY_NAME.fullmatch(name) is not None


def write_edited_copy(path: str, edited: EditedByReference, size: int | None) -> None:
    """Write the edited version at ``path`` (``size`` bytes, if known) unless it is there already
    with that size.

    Raises OSError when the received file cannot be read or the copy written, ValueError when
    the copy does not come out ``size`` bytes long (the received file changed). The pixel data
    goes through memory, which is quicker than ``copy_file_range`` on ext4 (docs/benchmarks.md).
    """
    try:
        existing: int | None = os.path.getsize(path)
    except FileNotFoundError:
        existing = None
    if existing is not None and size in (None, existing):
        return
    scratch = f"{path}.{uuid.uuid4().hex[:8]}.part"
    try:
        with open(edited.source, "rb", buffering=0) as source, open(scratch, "wb", buffering=0) as out:
            out.write(edited.header)
            source.seek(edited.offset)
            copy_range(source, out, edited.size - edited.offset)
            written = out.tell()
        if size is not None and written != size:
            raise ValueError(f"the edited version came out {written} bytes, {size} were recorded: {path}")
        os.replace(scratch, path)
    finally:
        try:
            os.unlink(scratch)
        except FileNotFoundError:
            pass
