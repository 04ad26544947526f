"""Transcoded versions of spool files: made once per (instance, syntax), durable, shared.

A version of the spool file ``objects/ab/abcd....dcm`` in syntax ``S`` is
``objects/ab/abcd....dcm.S``. It is written to a temporary name, fsynced and renamed into
place, so a version that exists is whole; every backend that wants the instance in ``S``
sends that file, and the spool removes them all with the instance
(:mod:`router.spool.variants`). Two
workers that make the same version at once each write their own temporary file; the last
rename wins and both files hold the same bytes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pydicom.uid import UID

from router.spool.checksum import file_checksum
from router.spool.store import fsync_dir
from router.spool.transcode import CannotConvert, convert_file
from router.spool.variants import variant_path
from router.transcode.files import Transcoded, transcode_file
from router.transcode.syntaxes import NATIVE, CannotTranscode


def ensure_variant(path: Path | str, received: str, syntax: str, *, keep_uid_on_lossy: bool = False) -> Path:
    """The version of spool file ``path`` (received in ``received``) in ``syntax``, made now if
    it is not there yet; raises :class:`CannotTranscode` (or OSError)."""
    target = variant_path(path, syntax)
    if target.exists():
        return target
    scratch = Path(f"{target}.{uuid.uuid4().hex[:8]}.part")
    try:
        write_in_syntax(path, received, syntax, scratch, keep_uid_on_lossy=keep_uid_on_lossy)
        fd = os.open(scratch, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(scratch, target)
        fsync_dir(target.parent)
    finally:
        _remove(scratch)
    return target


def write_in_syntax(
    path: Path | str, received: str, syntax: str, target: Path | str, *, keep_uid_on_lossy: bool = False
) -> Transcoded:
    """Write the instance in ``path`` (in syntax ``received``) to ``target`` in ``syntax``: only
    the element headers rewritten between the two uncompressed little-endian syntaxes, else
    transcoded frame by frame; raises :class:`CannotTranscode`."""
    if UID(received) in NATIVE and UID(syntax) in NATIVE:
        try:
            convert_file(path, target, syntax)
        except CannotConvert as exc:
            raise CannotTranscode(str(exc)) from None
        return Transcoded(file_checksum(target), "", False)
    return transcode_file(path, target, syntax, keep_uid_on_lossy=keep_uid_on_lossy)


def _remove(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
