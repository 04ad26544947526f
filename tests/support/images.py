"""Images with known pixel values in every shape the transcoder handles, and DCMTK's codecs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.support.dicomgen import make_dataset
from tests.support.peers import dcmtk, dcmtk_env


def pixels(rows: int, columns: int, *, bits_stored: int, signed: bool, samples: int, frames: int) -> np.ndarray:
    """Noise over a ramp, spanning the whole range ``bits_stored`` allows (seeded: the same every run)."""
    rng = np.random.default_rng(rows * 1000 + columns + bits_stored + 7 * samples + frames)
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    shape = (frames, rows, columns, samples)
    ramp = np.linspace(low, high, rows * columns).reshape(1, rows, columns, 1)
    noise = rng.integers(-(2 ** max(bits_stored - 4, 1)), 2 ** max(bits_stored - 4, 1), size=shape)
    values = np.clip(ramp + noise, low, high)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (8 if bits_stored <= 8 else 16, signed)
    ]
    return values.astype(dtype).reshape([n for n in shape if n != 1] if frames > 1 or samples > 1 else (rows, columns))


def write_image(
    path: Path,
    *,
    rows: int = 33,
    columns: int = 35,
    bits_stored: int = 16,
    signed: bool = False,
    samples: int = 1,
    frames: int = 1,
) -> np.ndarray:
    """An Explicit VR Little Endian file holding :func:`pixels`; returns the array."""
    array = pixels(rows, columns, bits_stored=bits_stored, signed=signed, samples=samples, frames=frames)
    array = array.reshape((frames, rows, columns, samples))
    ds = make_dataset("small", "IMG", generate_uid(), generate_uid(), 0, rows=rows)
    if samples == 3:
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.ConversionType = "WSD"
        for keyword in ("RescaleIntercept", "RescaleSlope", "KVP", "SliceThickness"):
            if keyword in ds:
                delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = array.astype(array.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.save_as(path, enforce_file_format=True)
    return (
        array.reshape([n for n in array.shape if n != 1])
        if array.size > rows * columns
        else array.reshape(rows, columns)
    )


def dcmtk_convert(tool: str, source: Path, target: Path, *options: str) -> None:
    """Run one of DCMTK's codec tools (``dcmcjpls``, ``dcmdrle``, ...) on a file."""
    subprocess.run(
        [dcmtk(tool), *options, str(source), str(target)], check=True, env=dcmtk_env(), timeout=60, capture_output=True
    )
