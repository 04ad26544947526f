"""Pixel data one frame at a time: decoded from a spool file, encoded in a target syntax.

Decoding uses pydicom's decoders (:func:`pydicom.pixels.get_decoder`) reading frames from
the open file, never the whole pixel data: with the pylibjpeg plugins (libjpeg for the JPEG
processes, openjpeg for JPEG 2000, rle), pyjpegls for JPEG-LS, and pydicom's own
code for the uncompressed syntaxes. Encoding uses pydicom's encoders (RLE, JPEG-LS,
JPEG 2000 through the same plugins) and Pillow for JPEG Baseline, which pydicom cannot
encode. Colour frames are decoded to RGB (a JPEG's YCbCr converted, as DCMTK's
``dcmdjpeg`` does by default) and kept interleaved (Planar Configuration 0).

Whatever a codec raises on damaged data becomes :class:`CannotTranscode` with its reason,
including a ``BaseException``: pylibjpeg-rle is Rust, and its panic on a frame that decodes to
more than the header says reaches Python as pyo3's ``PanicException``, which derives from
``BaseException`` and would otherwise end the worker thread that transcodes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import JPEG2000, UID, JPEGBaseline8Bit, JPEGLSNearLossless, RLELossless

from router.transcode.syntaxes import NATIVE, CannotTranscode, describe

JPEG_QUALITY = 90  # Pillow's scale; about 10:1 on CT
J2K_LOSSY_RATIO = 10.0
JPEG_LS_NEAR_ERROR = 2
NOT_CODEC_ERRORS = (GeneratorExit, KeyboardInterrupt, SystemExit)  # the BaseExceptions passed on


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module values that describe every frame."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int

    @classmethod
    def of(cls, header: Dataset) -> PixelFormat:
        return cls.of_values(header.get)

    @classmethod
    def of_values(cls, get: Callable[[str, Any], Any]) -> PixelFormat:
        """From ``get(keyword, default)``, the value of the header's element of that keyword
        (``default`` when it has none, None when it is empty), as ``Dataset.get`` gives it."""
        try:
            photometric = get("PhotometricInterpretation", None)
            if photometric is None:
                raise ValueError("no Photometric Interpretation")
            fmt = cls(
                rows=int(get("Rows", None)),
                columns=int(get("Columns", None)),
                samples_per_pixel=int(get("SamplesPerPixel", 1)),
                bits_allocated=int(get("BitsAllocated", None)),
                bits_stored=int(get("BitsStored", get("BitsAllocated", None))),
                pixel_representation=int(get("PixelRepresentation", 0)),
                photometric_interpretation=str(photometric).strip(),
                planar_configuration=int(get("PlanarConfiguration", 0) or 0),
                number_of_frames=int(get("NumberOfFrames", 1) or 1),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise CannotTranscode(f"the Image Pixel module is incomplete: {exc}") from None
        if fmt.bits_allocated not in (8, 16, 32):
            raise CannotTranscode(f"Bits Allocated {fmt.bits_allocated} is not transcoded")
        return fmt

    def options(self) -> dict:
        """The keyword arguments pydicom's decoders and encoders take for these frames."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": self.number_of_frames,
            "pixel_keyword": "PixelData",
        }

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated // 8


def decoded_frames(
    f, source_syntax: str, fmt: PixelFormat, *, native: bool = False
) -> Iterator[tuple[np.ndarray | bytearray, PixelFormat]]:
    """Each frame of the pixel data whose value starts at ``f``'s position, as an array, with
    the format the decoding left it in (RGB for colour, interleaved). ``native`` (the frames
    go to a native syntax): an RLE Lossless monochrome frame comes as the little-endian bytes
    the codec gives (:func:`_rle_frames`), the same bytes as the array's."""
    if native and UID(source_syntax) == RLELossless and fmt.samples_per_pixel == 1 and fmt.bits_allocated in (8, 16):
        yield from _rle_frames(f, fmt)
        return
    decoder = get_decoder(UID(source_syntax))
    if not decoder.is_available:
        raise CannotTranscode(f"no decoder for {describe(source_syntax)}: {', '.join(decoder.missing_dependencies)}")
    try:
        for array, properties in decoder.iter_array(f, **fmt.options(), as_rgb=True):
            decoded = replace(
                fmt,
                photometric_interpretation=str(
                    properties.get("photometric_interpretation", fmt.photometric_interpretation)
                ),
                planar_configuration=0,
                bits_allocated=int(properties.get("bits_allocated", fmt.bits_allocated)),
            )
            yield array, decoded
    except (CannotTranscode, *NOT_CODEC_ERRORS):
        raise
    except BaseException as exc:  # a codec's error on damaged data: its reason, whatever its type
        raise CannotTranscode(f"cannot decode {describe(source_syntax)}: {exc}") from None


def _rle_frames(f, fmt: PixelFormat) -> Iterator[tuple[bytearray, PixelFormat]]:
    """RLE Lossless monochrome frames decoded by pylibjpeg-rle (pydicom's RLE plugin) without
    pydicom's decoder around it: for a 512 x 512 CT frame about half of the decoding's time
    went to the decoder's checks and to the array made of the codec's bytes and turned back
    into bytes. Bits above Bits Stored are set as pydicom's decoder sets them (zero, or the
    sign for signed pixels), so the output is the same byte for byte."""
    from rle.rle import decode_frame

    decoded = replace(fmt, planar_configuration=0)
    try:
        for frame in generate_frames(f, number_of_frames=fmt.number_of_frames):
            yield _unused_bits_set(decode_frame(frame, fmt.rows * fmt.columns, fmt.bits_allocated, "<"), fmt), decoded
    except (CannotTranscode, *NOT_CODEC_ERRORS):
        raise
    except BaseException as exc:  # as in decoded_frames
        raise CannotTranscode(f"cannot decode {describe(RLELossless)}: {exc}") from None


def _unused_bits_set(data: bytearray, fmt: PixelFormat) -> bytearray:
    unused = fmt.bits_allocated - fmt.bits_stored
    if unused <= 0:
        return data
    pixels = np.frombuffer(data, "<u1" if fmt.bits_allocated == 8 else "<u2")
    if fmt.pixel_representation:
        signed = pixels.view(pixels.dtype.str.replace("u", "i"))
        signed <<= unused
        signed >>= unused
    else:
        pixels &= (1 << fmt.bits_stored) - 1
    return data


def output_format(decoded: PixelFormat, target: str) -> PixelFormat:
    """The format frames have once encoded in ``target``."""
    if UID(target) == JPEGBaseline8Bit and decoded.samples_per_pixel == 3:
        return replace(decoded, photometric_interpretation="YBR_FULL_422")
    return decoded


def encode_frame(array: np.ndarray, decoded: PixelFormat, target: str) -> bytes:
    """One frame in ``target``: little-endian bytes for a native syntax, else a codestream."""
    uid = UID(target)
    if uid in NATIVE:
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    if uid == JPEGBaseline8Bit:
        return _jpeg_baseline(array, decoded)
    encoder = get_encoder(uid)
    if not encoder.is_available:
        raise CannotTranscode(f"no encoder for {describe(uid)}: {', '.join(encoder.missing_dependencies)}")
    options = decoded.options() | {"number_of_frames": 1}
    del options["pixel_keyword"]
    if uid == JPEG2000:
        options["j2k_cr"] = [J2K_LOSSY_RATIO]
    elif uid == JPEGLSNearLossless:
        options["jls_error"] = JPEG_LS_NEAR_ERROR
    try:
        return bytes(encoder.encode(array, **options))
    except NOT_CODEC_ERRORS:
        raise
    except BaseException as exc:  # as for decoding
        raise CannotTranscode(f"cannot encode {describe(uid)}: {_first_line(exc)}") from None


def _jpeg_baseline(array: np.ndarray, decoded: PixelFormat) -> bytes:
    from PIL import Image

    if decoded.bits_allocated != 8 or decoded.pixel_representation != 0 or decoded.samples_per_pixel not in (1, 3):
        raise CannotTranscode("JPEG Baseline holds only unsigned 8-bit monochrome or RGB frames")
    if decoded.samples_per_pixel == 3 and decoded.photometric_interpretation != "RGB":
        raise CannotTranscode(f"JPEG Baseline from {decoded.photometric_interpretation} is not supported")
    image = Image.fromarray(
        np.ascontiguousarray(array, dtype=np.uint8), "RGB" if decoded.samples_per_pixel == 3 else "L"
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=1)  # 1: 4:2:2, as YBR_FULL_422 says
    return out.getvalue()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
