"""UIDs are validated once per process, and an invalid one is refused every time."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import AddressInformation

from router.engine import uid_cache
from tests.support.primitives import LONG_UID, ODD_UID


@pytest.fixture
def fresh_cache(monkeypatch):
    uid_cache.install_uid_cache()
    monkeypatch.setattr(uid_cache, "_validated", {})
    monkeypatch.setattr(uid_cache, "_checked_syntaxes", {})
    return uid_cache._validated


def test_a_valid_uid_is_validated_once(fresh_cache, monkeypatch):
    calls = []
    stock = uid_cache._stock_set_uid
    monkeypatch.setattr(uid_cache, "_stock_set_uid", lambda *a: calls.append(a[0]) or stock(*a))
    for _ in range(3):
        primitive = C_STORE()
        primitive.AffectedSOPInstanceUID = ODD_UID
        primitive.AffectedSOPClassUID = LONG_UID
        assert (primitive.AffectedSOPInstanceUID, primitive.AffectedSOPClassUID) == (ODD_UID, LONG_UID)
    assert calls == [ODD_UID, LONG_UID]


@pytest.mark.filterwarnings("ignore:The value length")
def test_an_invalid_uid_is_refused_every_time(fresh_cache):
    too_long = "1.2.3." + "4" * 70
    for _ in range(2):
        with pytest.raises(ValueError):
            C_STORE().AffectedSOPInstanceUID = too_long
    assert fresh_cache == {}


def test_non_conformant_uids_are_not_remembered(fresh_cache, caplog):
    for _ in range(2):
        C_STORE().AffectedSOPInstanceUID = "1.02.3"
    assert fresh_cache == {}
    assert sum("Non-conformant" in r.getMessage() for r in caplog.records) == 2


def test_the_cache_is_bounded(fresh_cache, monkeypatch):
    monkeypatch.setattr(uid_cache, "MAX_ENTRIES", 10)
    for n in range(25):
        C_STORE().AffectedSOPInstanceUID = f"1.2.3.{n + 1}"
    assert len(fresh_cache) <= 10


def association_request_bytes() -> bytes:
    """An A-ASSOCIATE-RQ as storescu sends it: many contexts, each with the same three syntaxes."""
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "ROUTER"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 11112)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 104)
    contexts = []
    for n, sop_class in enumerate([LONG_UID, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"] * 10):
        context = build_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"])
        context.context_id = 2 * n + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 131072
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def test_an_association_request_validates_each_uid_once(fresh_cache, monkeypatch):
    data = association_request_bytes()
    calls = []
    stock = uid_cache._stock_set_uid
    monkeypatch.setattr(uid_cache, "_stock_set_uid", lambda *a: calls.append(a[0]) or stock(*a))
    decoded, stock_calls = [], []
    for _ in range(2):
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(data)
        primitive = pdu.to_primitive()
        decoded.append(
            [
                (c.context_id, c.abstract_syntax, c.transfer_syntax)
                for c in primitive.presentation_context_definition_list
            ]
        )
        stock_calls.append(len(calls))
    assert decoded[0] == decoded[1] and len(decoded[0]) == 30
    assert decoded[0][1] == (
        3,
        "1.2.840.10008.5.1.4.1.1.2",
        ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"],
    )
    assert 0 < stock_calls[0] <= 20, "each distinct UID once, as bytes and as str"
    assert stock_calls[1] == stock_calls[0], "none validated again"


SYNTAX_INPUTS = [
    "1.2.840.10008.1.2.1",
    UID("1.2.840.10008.1.2"),
    b"1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.1",  # again: not added twice
    "1.2.826.0.1.3680043.9.1",  # private: accepted without a warning
    "1.2.840.10008.5.1.4.1.1.2",  # a DICOM UID that is not a transfer syntax: warned about
    "1.02.3",  # not conformant: warned about
    None,
]


def add_all(add, inputs) -> tuple[list, list[str]]:
    context = PresentationContext()
    outcomes = []
    for syntax in inputs:
        try:
            add(context, syntax)
            outcomes.append("ok")
        except ValueError as exc:
            outcomes.append(f"ValueError: {exc}")
    return context.transfer_syntax, outcomes


@pytest.mark.filterwarnings("ignore:The value length", "ignore:Invalid value for VR UI")
def test_cached_transfer_syntax_checks_give_what_pynetdicom_gives(fresh_cache, caplog):
    too_long = "1.2.3." + "4" * 70
    inputs = SYNTAX_INPUTS + [too_long]
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        expected = add_all(uid_cache._stock_add_transfer_syntax, inputs)
        stock_warnings = [r.getMessage() for r in caplog.records]
        caplog.clear()
        for _ in range(3):
            assert add_all(PresentationContext.add_transfer_syntax, inputs) == expected
            assert [r.getMessage() for r in caplog.records] == stock_warnings
            caplog.clear()
    assert len(expected[0]) == 6 and expected[1][-1].startswith("ValueError")
    assert set(uid_cache._checked_syntaxes) == {
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
        b"1.2.840.10008.1.2.4.50",
        "1.2.826.0.1.3680043.9.1",
    }
