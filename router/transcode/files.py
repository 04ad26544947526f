"""Write a spool file's instance in another transfer syntax, frame by frame, file to file.

The header is read as :mod:`router.spool.splice` reads it (long values left in the file)
and written back with the transfer syntax, the Image Pixel values the new encoding needs,
and, for a lossy target, what PS3.3 C.7.6.1.1.5 asks (Lossy Image Compression ``01``, its
ratio and method, and a new SOP Instance UID unless the caller keeps it). The pixel data is
decoded and encoded one frame at a time and written as it is made (each frame one fragment
of encapsulated pixel data, with an empty Basic Offset Table), so memory holds one frame
whatever the number of frames. A deflated source, rare and small, is inflated whole first.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from router.spool.checksum import ChecksummingWriter, file_checksum
from router.spool.deflated import read_deflated
from router.spool.element_stream import NotStreamable
from router.spool.spans import LONG_VRS
from router.spool.splice import SpliceError, clone_header, read_header, write_spliced
from router.spool.stream_header import read_stream_header, text_of
from router.transcode.header_bytes import check_streamable, image_pixel_values, output_header
from router.transcode.syntaxes import LOSSY, LOSSY_METHODS, NATIVE, CannotTranscode, describe

if TYPE_CHECKING:
    import numpy as np

    from router.transcode.frames import PixelFormat

PIXEL_DATA = 0x7FE00010
SOP_INSTANCE = 0x00080018
OFFSET_TABLES = (0x7FE00001, 0x7FE00002)  # the Extended Offset Table and its lengths: the old encoding's
ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


@dataclass(frozen=True)
class Transcoded:
    checksum: str
    sop_instance_uid: str
    lossy: bool


def transcode_file(
    source: Path | str, target: Path | str, syntax: str, *, keep_uid_on_lossy: bool = False
) -> Transcoded:
    """Write the instance in ``source`` to ``target`` in ``syntax``; raises :class:`CannotTranscode`.

    The header is read and written from its element bytes (:mod:`router.transcode.header_bytes`)
    where that covers it, else through pydicom's data set."""
    try:
        return _transcode_from_bytes(source, target, UID(syntax))
    except NotStreamable:
        pass
    try:
        header, layout = read_header(source)
    except (SpliceError, OSError, ValueError) as exc:
        raise CannotTranscode(f"cannot read the instance: {exc}") from None
    source_syntax = UID(header.file_meta.TransferSyntaxUID)
    if layout.deflated:
        return _from_deflated(source, target, syntax, keep_uid_on_lossy)
    syntax = UID(syntax)
    if syntax == source_syntax:
        raise CannotTranscode(f"the instance is already {describe(syntax)}")
    if layout.pixel_tag is None:
        if syntax not in NATIVE:
            raise CannotTranscode(f"the instance has no pixel data to encode as {describe(syntax)}")
        return _write(source, target, header, layout, syntax, None)
    if layout.pixel_tag != PIXEL_DATA or layout.pixel_start is None:
        raise CannotTranscode("float pixel data is not transcoded")
    from router.transcode.frames import PixelFormat  # numpy: when used

    with open(source, "rb") as f:
        writer, out_format = _pixel_writer(f, layout.pixel_start, source_syntax, PixelFormat.of(header), syntax)
        edited = _output_header(header, source_syntax, syntax, out_format, keep_uid_on_lossy)
        result = _write(source, target, edited, layout, syntax, writer)
    if writer.lossy_ratio is not None:
        _record_ratio(target, writer.lossy_ratio)
        return Transcoded(file_checksum(target), result.sop_instance_uid, True)
    return result


def _transcode_from_bytes(source: Path | str, target: Path | str, syntax: UID) -> Transcoded:
    """:func:`transcode_file` with the header as element bytes; raises :class:`NotStreamable`
    (nothing written) where :mod:`router.transcode.header_bytes` does not cover it."""
    try:
        buf, header, layout = read_stream_header(source)
    except OSError as exc:
        raise NotStreamable(str(exc)) from None  # pydicom's way reports it
    source_syntax = UID(header.syntax)
    if syntax == source_syntax:
        raise NotStreamable("the same syntax")
    check_streamable(header, layout.pixel_tag, syntax)
    sop_instance = next((e for e in header.elements if e.tag == SOP_INSTANCE), None)
    if sop_instance is None or layout.pixel_start is None:
        raise NotStreamable("no SOP Instance UID or no pixel data")
    from router.transcode.frames import PixelFormat  # numpy: when used

    fmt = PixelFormat.of_values(image_pixel_values(buf, header).get)
    with open(source, "rb") as f:
        writer, out_format = _pixel_writer(f, layout.pixel_start, source_syntax, fmt, syntax)
        head = output_header(buf, header, syntax, out_format.photometric_interpretation, out_format.samples_per_pixel)
        try:
            with open(target, "wb") as out:
                checksummed = ChecksummingWriter(out)
                checksummed.write(head)
                writer(checksummed)
        except BaseException:
            _remove(target)
            raise
    return Transcoded(checksummed.checksum, text_of(buf, sop_instance), False)


def _pixel_writer(
    f, pixel_start: int, source_syntax: UID, fmt: PixelFormat, syntax: UID
) -> tuple[_PixelWriter, PixelFormat]:
    """A writer of the pixel data whose element starts at ``pixel_start`` in ``f``, in ``syntax``,
    with its first frame decoded already; and the format the output's frames have (known
    only then, and named in the header written before them)."""
    from router.transcode.frames import decoded_frames, encode_frame, output_format  # numpy: when used

    f.seek(value_start(f, pixel_start, source_syntax))
    frames = decoded_frames(f, source_syntax, fmt, native=syntax in NATIVE)
    first = next(frames, None)
    if first is None:
        raise CannotTranscode("the pixel data holds no frame")
    decoded = first[1]
    return _PixelWriter(chain([first], frames), decoded, fmt, syntax, encode_frame), output_format(decoded, syntax)


def _write(source, target, header, layout, syntax, pixel_writer) -> Transcoded:
    if pixel_writer is None:
        header = clone_header(header)
        header.file_meta.TransferSyntaxUID = UID(syntax)
    try:
        with open(target, "wb") as out:
            checksummed = ChecksummingWriter(out)
            write_spliced(source, header, layout, checksummed, pixel_data=pixel_writer)
    except BaseException:
        _remove(target)
        raise
    return Transcoded(checksummed.checksum, str(header.SOPInstanceUID), UID(syntax) in LOSSY)


def _output_header(header, source_syntax: UID, syntax: str, fmt: PixelFormat, keep_uid_on_lossy: bool):
    edited = clone_header(header)
    edited.file_meta.TransferSyntaxUID = UID(syntax)
    for tag in OFFSET_TABLES:
        if tag in edited:
            del edited[tag]
    edited.PhotometricInterpretation = fmt.photometric_interpretation
    if fmt.samples_per_pixel > 1:
        edited.PlanarConfiguration = 0
    elif "PlanarConfiguration" in edited:
        del edited.PlanarConfiguration
    if source_syntax in LOSSY:
        edited.LossyImageCompression = "01"
    if UID(syntax) in LOSSY:
        edited.LossyImageCompression = "01"
        methods = _values(edited.get("LossyImageCompressionMethod"))
        edited.LossyImageCompressionMethod = [*methods, LOSSY_METHODS[UID(syntax)]]
        if not keep_uid_on_lossy:
            new_uid = generate_uid(entropy_srcs=[str(header.SOPInstanceUID), str(syntax)])
            edited.SOPInstanceUID = new_uid
    return edited


class _PixelWriter:
    """Writes the new pixel data element to the output as frames are decoded and encoded."""

    def __init__(
        self,
        frames: Iterator[tuple[np.ndarray | bytearray, PixelFormat]],
        decoded: PixelFormat,
        fmt: PixelFormat,
        syntax: str,
        encode: Callable[[np.ndarray, PixelFormat, str], bytes],
    ):
        self.frames, self.decoded, self.fmt, self.syntax, self.encode = frames, decoded, fmt, UID(syntax), encode
        self.lossy_ratio: float | None = None

    def __call__(self, out) -> None:
        if self.syntax in NATIVE:
            self._native(out)
        else:
            self._encapsulated(out)

    def _native(self, out) -> None:
        length = self.decoded.frame_bytes * self.fmt.number_of_frames
        vr = b"OW" if self.decoded.bits_allocated > 8 else b"OB"
        padded = length + length % 2
        if self.syntax == ImplicitVRLittleEndian:
            out.write(struct.pack("<HHI", 0x7FE0, 0x0010, padded))
        else:
            out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, padded))
        written = 0
        for array, _ in self.frames:
            data = array if isinstance(array, bytearray) else self.encode(array, self.decoded, self.syntax)
            if len(data) != self.decoded.frame_bytes:
                raise CannotTranscode(f"a decoded frame is {len(data)} bytes, {self.decoded.frame_bytes} expected")
            out.write(data)
            written += len(data)
        if written != length:
            raise CannotTranscode(
                f"the pixel data held {written // self.decoded.frame_bytes} frames, not {self.fmt.number_of_frames}"
            )
        if length % 2:
            out.write(b"\0")

    def _encapsulated(self, out) -> None:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        out.write(ITEM + struct.pack("<I", 0))
        raw = encoded = count = 0
        for array, _ in self.frames:
            assert not isinstance(array, bytearray)  # frames as bytes only for a native syntax
            data = self.encode(array, self.decoded, self.syntax)
            if len(data) % 2:
                data += b"\0"
            out.write(ITEM + struct.pack("<I", len(data)))
            out.write(data)
            raw, encoded, count = raw + self.decoded.frame_bytes, encoded + len(data), count + 1
        if count != self.fmt.number_of_frames:
            raise CannotTranscode(f"the pixel data held {count} frames, not {self.fmt.number_of_frames}")
        out.write(SEQUENCE_END)
        if self.syntax in LOSSY:
            self.lossy_ratio = raw / max(encoded, 1)


def _record_ratio(target, ratio: float) -> None:
    """Lossy Image Compression Ratio is known only once every frame is encoded, after the
    header was written: the header is written again with it (the pixel data copied as is)."""
    header, layout = read_header(target)
    header = clone_header(header)
    ratios = [str(r) for r in _values(header.get("LossyImageCompressionRatio"))]
    header.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"[:16]]
    tmp = f"{target}.ratio"
    try:
        with open(tmp, "wb") as out:
            write_spliced(target, header, layout, out)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _values(value) -> list:
    """The values of an attribute of any multiplicity (none, one, or a MultiValue)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def value_start(f, element_start: int, syntax: UID) -> int:
    """Where the value of the element whose header starts at ``element_start`` begins."""
    f.seek(element_start)
    head = f.read(8)
    if syntax.is_implicit_VR or head[4:6] not in LONG_VRS:
        return element_start + 8
    return element_start + 12


def _from_deflated(source, target, syntax: str, keep_uid_on_lossy: bool) -> Transcoded:
    dataset = read_deflated(source)
    with tempfile.NamedTemporaryFile(dir=Path(target).parent, suffix=".inflated", delete=False) as scratch:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dcmwrite(scratch, dataset, enforce_file_format=True)
    try:
        if UID(syntax) == ExplicitVRLittleEndian:
            os.replace(scratch.name, target)
            return Transcoded(file_checksum(target), str(dataset.SOPInstanceUID), False)
        return transcode_file(scratch.name, target, syntax, keep_uid_on_lossy=keep_uid_on_lossy)
    finally:
        _remove(scratch.name)


def _remove(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
