"""The checksum every spool file carries from intake to delivery (xxHash XXH3, 64 bits).

Computed while a received data set streams to its file (:mod:`router.engine.store_decode`),
or by reading the file where it was written another way (an edited version, a data set
received the stock pynetdicom way), stored in the queue row, and checked before each
delivery: a file that is missing, shorter or longer than recorded, or whose bytes changed
is quarantined with that reason instead of being delivered.

xxHash, from the ``xxhash`` package (the reference C implementation's Python binding):
about 10 us per 0.5 MB CT instance here, against 350 us for ``zlib.crc32``.
"""

from __future__ import annotations

import os

from router.engine.part10 import new_checksum

CHUNK = 1024 * 1024


def file_checksum(path: str | os.PathLike) -> str:
    """The checksum of the file at ``path``."""
    hasher = new_checksum()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    return hasher.hexdigest()


def damage(path: str, size: int | None, checksum: str | None) -> str | None:
    """Why the spool file at ``path`` is not what was recorded (missing, another size, other
    bytes), or None when it is intact (or nothing was recorded to compare with)."""
    try:
        actual = os.path.getsize(path)
    except OSError:
        return f"spool file missing: {path}"
    if size is not None and actual != size:
        return f"spool file is {actual} bytes, {size} were recorded: {path}"
    if checksum is not None and file_checksum(path) != checksum:
        return f"spool file checksum mismatch (its bytes changed since intake): {path}"
    return None
