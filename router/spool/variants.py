"""Names of transcoded versions of spool files, and their removal with the instance.

A version of the spool file ``objects/ab/abcd....dcm`` in transfer syntax ``S`` is
``objects/ab/abcd....dcm.S`` (made by :mod:`router.transcode.variants`). The spool removes
them with the instance (:func:`remove_variants`) and never takes one for an orphan.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

# Every syntax the router writes (router.transcode.syntaxes.ENCODABLE is this set).
TRANSCODE_TARGETS = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGLSNearLossless,
        JPEG2000,
    }
)


def variant_path(path: Path | str, syntax: str) -> Path:
    return Path(f"{path}.{syntax}")


def variant_base(name: str) -> str | None:
    """The spool file name a transcoded version's name belongs to, or None for any other name."""
    head, dot, syntax = name.rpartition(".dcm.")
    return f"{head}.dcm" if dot and syntax in TRANSCODE_TARGETS else None


def remove_variants(path: Path | str) -> None:
    """Remove every transcoded version of spool file ``path``."""
    for syntax in TRANSCODE_TARGETS:
        try:
            os.unlink(variant_path(path, syntax))
        except FileNotFoundError:
            pass
