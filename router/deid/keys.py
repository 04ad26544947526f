"""Keyed pseudonyms: everything the de-identifier derives from the secret key.

Each value is an HMAC-SHA256 of the original under the key, with a label per purpose
so one derivation never equals another. The same key gives the same UIDs, pseudonyms
and date shifts in every process and after every restart; another key gives others.
Without the key the originals cannot be recovered or confirmed by guessing.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

MIN_KEY_BYTES = 16


class KeyFileError(ValueError):
    pass


def read_key(path: Path) -> bytes:
    """The secret in ``path`` (surrounding whitespace ignored); at least 16 bytes."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(
            f"key file {path} holds {len(key)} bytes; use at least {MIN_KEY_BYTES}"
            " (e.g. `head -c 32 /dev/urandom | base64 > FILE`)"
        )
    return key


def new_key_text() -> str:
    """A fresh key as the text of a key file."""
    return base64.b64encode(os.urandom(32)).decode() + "\n"


@dataclass(frozen=True)
class Keyring:
    key: bytes = field(repr=False)  # the secret never reaches a log line or a traceback
    date_shift_min_days: int = 1
    date_shift_max_days: int = 3650

    def _digest(self, purpose: str, value: str) -> bytes:
        """The HMAC of ``value`` for ``purpose``; the last few thousand are remembered, as the
        same study, series and patient values come with every instance of a study."""
        return _digest(self.key, purpose, value)

    def uid(self, original: str) -> str:
        """``2.25.<128-bit integer>``: a valid UID (at most 44 characters) derived from ``original``."""
        return "2.25." + str(int.from_bytes(self._digest("uid", original.strip("\0 "))[:16], "big"))

    def pseudonym(self, purpose: str, original: str, length: int = 12) -> str:
        """Upper-case letters and digits, ``length`` long, for ``purpose`` (e.g. "patient")."""
        text = base64.b32encode(self._digest(purpose, original)).decode().rstrip("=")
        return text[:length]

    def date_shift(self, patient: str) -> dt.timedelta:
        """Whole days back in time, the same for every instance of one patient."""
        span = self.date_shift_max_days - self.date_shift_min_days + 1
        n = int.from_bytes(self._digest("date-shift", patient)[:8], "big")
        return dt.timedelta(days=-(self.date_shift_min_days + n % span))


@functools.lru_cache(maxsize=4096)
def _digest(key: bytes, purpose: str, value: str) -> bytes:
    return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
