"""UIDs are validated once per process, and an invalid one is refused every time."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_primitives import C_STORE

from router.engine import uid_cache
from tests.support.primitives import LONG_UID, ODD_UID


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(uid_cache, "_validated", {})
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
