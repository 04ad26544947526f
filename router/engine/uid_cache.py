"""UIDs validated once, not on every DIMSE primitive (owned code, version-guarded).

pynetdicom 3.0.4 validates a UID each time a primitive is given one, and builds a pydicom
``UID`` twice on the way, about 20 us a time here. A C-STORE passes the same SOP class
UID every time and its SOP instance UID three or four times (request, response, on both
sides). :func:`install_uid_cache` remembers UIDs that passed and are conformant, so each is
validated once per process; a UID that fails is never remembered and fails again in the
same way. The cache holds at most :data:`MAX_ENTRIES` values and starts over when full.
"""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import dimse_primitives

MAX_ENTRIES = 4096

_stock_set_uid = dimse_primitives.set_uid
_validated: dict[tuple[str, bool, bool], UID] = {}


def set_uid(value, name: str, allow_empty: bool = True, allow_none: bool = True, validate: bool = True):
    """pynetdicom's ``set_uid``, answering from the cache for a str or UID seen before."""
    if not isinstance(value, str):
        return _stock_set_uid(value, name, allow_empty, allow_none, validate)
    key = (value, allow_empty, validate)
    uid = _validated.get(key)
    if uid is None:
        uid = _stock_set_uid(value, name, allow_empty, allow_none, validate)
        if uid and uid.is_valid:
            if len(_validated) >= MAX_ENTRIES:
                _validated.clear()
            _validated[key] = uid
    return uid


def install_uid_cache() -> None:
    dimse_primitives.set_uid = set_uid
