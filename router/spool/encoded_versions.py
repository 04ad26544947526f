"""Edited versions whose header is already encoded: written as bytes, pixel data copied after.

A stage that edits a header without pydicom's data set model (the anonymize stage's
element-stream path) hands over an :class:`EncodedHeader`: the file meta group and the
data set's elements before the pixel data, as bytes. :func:`write_edited` writes any edited
instance: such bytes followed by the source file's pixel data copied byte for byte, or a
pydicom header through :func:`~router.spool.splice.write_spliced`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread

from router.spool.splice import Layout, copy_range, write_spliced


@dataclass(frozen=True)
class EncodedHeader:
    """``meta``: group 0002 with its group length; ``body``: the elements before the pixel data,
    which runs from ``layout.pixel_start`` to the end of the source file (nothing follows it);
    ``sop_instance_uid``: the one the header carries; ``preamble``: the file's first 128 bytes;
    ``pixel_data``: the source's bytes from ``layout.pixel_start`` to its end when the stage
    read them already (a small file read whole), so they are written without reading the file again."""

    meta: bytes
    body: bytes
    layout: Layout
    sop_instance_uid: str
    preamble: bytes = bytes(128)
    pixel_data: bytes | None = None

    def dataset(self) -> Dataset:
        """The header as pydicom reads it (for a stage that reads or edits it after this one)."""
        return dcmread(io.BytesIO(self.preamble + b"DICM" + self.meta + self.body), force=True)


def write_edited(instance, out) -> None:
    """Write the edited ``instance`` (a :class:`~router.envelope.SpooledInstance`) to ``out``."""
    encoded = getattr(instance, "encoded", None)
    if encoded is None:
        write_spliced(instance.path, instance.header, instance.layout, out)
        return
    layout = encoded.layout
    if encoded.pixel_data is not None:
        out.write(encoded.preamble + b"DICM" + encoded.meta + encoded.body + encoded.pixel_data)
        return
    out.write(encoded.preamble + b"DICM" + encoded.meta + encoded.body)
    if layout.pixel_start is not None:
        with open(Path(instance.path), "rb") as src:
            src.seek(layout.pixel_start)
            copy_range(src, out, layout.size - layout.pixel_start)
