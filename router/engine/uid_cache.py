"""UIDs validated once, not on every DIMSE primitive or association (owned code, declared in router/engine/changes.py).

pynetdicom 3.0.4 validates a UID each time a primitive, a PDU item or a presentation
context is given one, and builds a pydicom ``UID`` twice on the way, about 20 us a time
here. A C-STORE passes the same SOP class UID every time and its SOP instance UID three or
four times (request, response, on both sides). An association request from DCMTK's
``storescu`` carries 128 presentation contexts: over 500 UIDs, decoded from the PDU, put
into the primitive, then into presentation contexts, then into the answer, each step
validating them again (about 30 ms of one CPU an association, measured here).

:func:`install_uid_cache` makes pynetdicom's ``set_uid`` remember UIDs that passed and
are conformant, so each is validated once per process, given as ``str``, ``UID`` or the
PDU's ``bytes``; ``PresentationContext.add_transfer_syntax`` likewise remembers the
transfer syntaxes that passed all its checks. A UID that fails, or is not conformant, is
never remembered: it fails or is warned about again in the same way. Each cache holds at
most :data:`MAX_ENTRIES` values and starts over when full.
"""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import dimse_primitives, pdu_items, pdu_primitives, presentation

MAX_ENTRIES = 4096

_MODULES = (dimse_primitives, pdu_items, pdu_primitives, presentation)
_stock_set_uid = dimse_primitives.set_uid
_validated: dict[tuple[str | bytes, bool, bool], UID] = {}
_stock_add_transfer_syntax = presentation.PresentationContext.add_transfer_syntax
_checked_syntaxes: dict[str | bytes, UID] = {}


def set_uid(value, name: str, allow_empty: bool = True, allow_none: bool = True, validate: bool = True):
    """pynetdicom's ``set_uid``, answering from the cache for a str, UID or bytes seen before."""
    if not isinstance(value, (str, bytes)):
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


def add_transfer_syntax(context: presentation.PresentationContext, syntax) -> None:
    """pynetdicom's ``PresentationContext.add_transfer_syntax``, skipping the checks for a
    syntax (str, UID or bytes) that passed all of them before: a conformant UID that is a
    known or private transfer syntax."""
    uid = _checked_syntaxes.get(syntax) if isinstance(syntax, (str, bytes)) else None
    if uid is None:
        added_before = len(context._transfer_syntax)
        _stock_add_transfer_syntax(context, syntax)
        if isinstance(syntax, (str, bytes)) and len(context._transfer_syntax) > added_before:
            _remember_if_checked(syntax, context._transfer_syntax[-1])
    elif uid not in context._transfer_syntax:
        context._transfer_syntax.append(uid)


def _remember_if_checked(syntax: str | bytes, uid: UID) -> None:
    if uid.is_valid and (uid.is_private or uid.is_transfer_syntax):
        if len(_checked_syntaxes) >= MAX_ENTRIES:
            _checked_syntaxes.clear()
        _checked_syntaxes[syntax] = uid


def install_uid_cache() -> None:
    for module in _MODULES:
        module.set_uid = set_uid
    presentation.PresentationContext.add_transfer_syntax = add_transfer_syntax
