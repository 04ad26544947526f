"""The match language, table-driven on envelopes with real headers."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage

from router.envelope import AssociationInfo, Command, Drop, Reject, RequestEnvelope
from router.middleware.filter import FilterConfig, FilterStage
from router.middleware.match import Matcher, MatchError


class FakeInstance:
    def __init__(self, header):
        self.header = header


def envelope(
    modality="CT",
    image_type=("ORIGINAL", "PRIMARY"),
    calling="CT_SCANNER1",
    host="10.1.2.3",
    sop=CTImageStorage,
    extra=None,
):
    ds = Dataset()
    if modality is not None:
        ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.SeriesNumber = 3
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    return RequestEnvelope(
        association=AssociationInfo("ingest", "a1", calling, "ROUTER", host, 40000),
        command=Command("store", sop, 1, affected_sop_instance_uid="1.2.3"),
        instance=FakeInstance(ds),
    )


CASES = [
    ({"Modality": "CT"}, {}, True),
    ({"Modality": "CT"}, {"modality": "MR"}, False),
    ({"Modality": ["CT", "MR"]}, {"modality": "MR"}, True),
    ({"Modality": "C?"}, {}, True),
    ({"Modality": "c*"}, {}, False),  # case-sensitive
    ({"Modality": "CT"}, {"modality": None}, False),  # absent
    ({"Modality": {"not": "SR"}}, {"modality": None}, True),  # absent matches a negation
    ({"Modality": {"not": ["CT", "MR"]}}, {}, False),
    ({"ImageType": "PRIMARY"}, {}, True),  # any value of a multi-valued attribute
    ({"ImageType": {"not": "ORIGINAL"}}, {}, False),  # negation: no value matches
    ({"(0008,0060)": "CT"}, {}, True),
    ({"00080060": "CT"}, {}, True),
    ({"SeriesNumber": 3}, {}, True),
    ({"SeriesNumber": 4}, {}, False),
    ({"calling_aet": "CT_*"}, {}, True),
    ({"calling_aet": "CT_*"}, {"calling": "MR01"}, False),
    ({"peer_address": "10.0.0.0/8"}, {}, True),
    ({"peer_address": "192.168.0.0/16"}, {}, False),
    ({"peer_address": "10.1.2.*"}, {}, True),
    ({"sop_class": MRImageStorage}, {}, False),
    ({"sop_class": CTImageStorage, "Modality": "CT", "calling_aet": "CT_*"}, {}, True),
    ({"sop_class": CTImageStorage, "Modality": "MR"}, {}, False),
    ({"endpoint": "ingest"}, {}, True),
    ({"called_aet": "ROUTER"}, {}, True),
    ({"Modality": {"regex": "^(CT|MR)$"}}, {}, True),
    ({"Modality": {"regex": "^MR"}}, {}, False),
    ({"calling_aet": {"regex": "SCANNER\\d$"}}, {}, True),
    ({"SeriesNumber": {"min": 1, "max": 3}}, {}, True),
    ({"SeriesNumber": {"min": 4}}, {}, False),
    ({"SeriesNumber": {"max": 2.5}}, {}, False),
    ({"StudyDate": {"min": "2024-01-01", "max": "20241231"}}, {"extra": {"StudyDate": "20240615"}}, True),
    ({"StudyDate": {"min": "2024-07-01"}}, {"extra": {"StudyDate": "20240615"}}, False),
    ({"StudyDate": {"max": "2024-07-01"}}, {}, False),  # absent never in range
    ({"AcquisitionDateTime": {"min": "20240615"}}, {"extra": {"AcquisitionDateTime": "20240615101010"}}, True),
    ({"StudyDate": {"exists": True}}, {"extra": {"StudyDate": ""}}, True),  # present, empty
    ({"StudyDate": {"exists": True}}, {}, False),
    ({"StudyDate": {"exists": False}}, {}, True),
    ({"StudyDate": {"absent": True}}, {}, True),
    ({"Modality": {"absent": True}}, {}, False),
    ({"SeriesNumber": {"min": 1, "regex": "^3$"}}, {}, True),  # operators in one table all hold
    ({"SeriesNumber": {"min": 1, "regex": "^4$"}}, {}, False),
    ({"Modality": {"not": {"regex": "^S"}}}, {}, True),
]


@pytest.mark.parametrize("table,kwargs,expected", CASES)
def test_match(table, kwargs, expected):
    assert Matcher.compile(table)(envelope(**kwargs)) is expected


@pytest.mark.parametrize(
    "table,message",
    [
        ({"Modalty": "CT"}, "'Modalty' is not a DICOM keyword"),
        ({"Modality": []}, "an empty array matches nothing"),
        ({"Modality": {"like": "C."}}, "unknown operator(s) ['like']"),
        ({"Modality": {"regex": "("}}, "invalid regex"),
        ({"SeriesNumber": {"min": 1, "max": "2024-01-01"}}, "min/max must both be numbers or both be dates"),
        ({"StudyDate": {"min": "yesterday"}}, "date range bounds must be YYYYMMDD"),
        ({"StudyDate": {"exists": "yes"}}, "exists takes true or false"),
        ({"peer_address": "10.0.0.0/33"}, "invalid network"),
        ({"Modality": True}, "true/false is not a condition"),
        ({"Modality": [["CT"]]}, "array members must be strings or numbers"),
    ],
)
def test_invalid_match(table, message):
    with pytest.raises(MatchError) as exc:
        Matcher.compile(table)
    assert message in str(exc.value)


def test_envelope_fields_need_no_header():
    assert not Matcher.compile({"calling_aet": "X"}).needs_header
    assert Matcher.compile({"Modality": "CT"}).needs_header


@pytest.mark.parametrize(
    "action,modality,expected",
    [("drop", "CT", "pass"), ("drop", "SR", Drop), ("reject", "SR", Reject), ("reject", "MR", "pass")],
)
def test_filter_stage(action, modality, expected):
    stage = FilterStage("p.middleware[0](filter)", FilterConfig(match={"Modality": ["CT", "MR"]}, action=action))
    env = envelope(modality=modality)
    out = stage(env)
    if expected == "pass":
        assert out is env
    else:
        assert isinstance(out, expected)
        if expected is Reject:
            assert out.status == 0x0124
