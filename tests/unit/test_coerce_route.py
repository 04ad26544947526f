"""``coerce`` and ``route``, table-driven on real spooled files."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.uid import CTImageStorage

from router.envelope import (
    AssociationInfo,
    Command,
    Drop,
    Reject,
    RequestEnvelope,
    SpooledInstance,
)
from router.middleware.coerce import CoerceConfig, CoerceStage
from router.middleware.route import RouteConfig, RouteStage
from tests.support.richgen import write_rich_study


@pytest.fixture(scope="module")
def instance_path(tmp_path_factory):
    return write_rich_study(tmp_path_factory.mktemp("rich"), series=1, per_series=1)[0]


def envelope(path, calling="CT_SCANNER1", endpoint="ingest"):
    return RequestEnvelope(
        association=AssociationInfo(endpoint, "a1", calling, "ROUTER", "10.1.2.3", 40000),
        command=Command("store", CTImageStorage, 1, affected_sop_instance_uid="1.2.3"),
        instance=SpooledInstance(path, "1.2.840.10008.1.2.1", path.stat().st_size),
    )


def coerce(path, operations, **config):
    stage = CoerceStage("p.middleware[0](coerce)", CoerceConfig(operations=operations, **config))
    return stage(envelope(path))


COERCE_CASES = [
    ({"set": "InstitutionName", "value": "Central"}, {"InstitutionName": "Central"}),
    ({"set": "StationName", "value": "{calling_aet}"}, {"StationName": "CT_SCANNER1"}),
    (
        {"set": "StudyDescription", "value": "{Modality} from {calling_aet} at {endpoint}"},
        {"StudyDescription": "CT from CT_SCANNER1 at ingest"},
    ),
    ({"set": "ImageType", "value": "DERIVED\\SECONDARY"}, {"ImageType": ["DERIVED", "SECONDARY"]}),
    ({"set": "(0008,1010)", "value": "BY_TAG"}, {"StationName": "BY_TAG"}),
    ({"set": "Rows", "value": "32"}, {"Rows": 32}),
    ({"set": "PatientComments", "value": "{OtherPatientNames}"}, {"PatientComments": ""}),  # absent -> ""
    ({"delete": ["InstitutionName", "(0008,1010)"]}, {"InstitutionName": None, "StationName": None}),
    ({"delete": ["(0009,xxxx)"]}, {"(0009,0010)": None, "(0009,1001)": None, "(0011,0010)": "SAFE VENDOR"}),
    ({"delete": ["private"]}, {"(0009,1001)": None, "(0011,1011)": None}),
    ({"copy": "PatientID", "to": "OtherPatientIDs"}, {"OtherPatientIDs": "P001"}),
    ({"replace": "AccessionNumber", "pattern": "^AP", "with": "X-"}, {"AccessionNumber": "X-001240315"}),
    (
        {"replace": "InstitutionName", "pattern": r"St\. (\w+)", "with": r"Saint \1"},
        {"InstitutionName": "Saint Example Hospital"},
    ),
    ({"set": "StationName", "value": "MR_ONLY", "match": {"Modality": "MR"}}, {"StationName": "CTSCAN01"}),
    ({"set": "StationName", "value": "CT_ONLY", "match": {"Modality": "CT"}}, {"StationName": "CT_ONLY"}),
]


def _value(ds, key):
    if key.startswith("("):
        tag = int(key[1:5] + key[6:10], 16)
        return ds[tag].value if tag in ds else None
    return ds.get(key)


@pytest.mark.parametrize("operation,expected", COERCE_CASES)
def test_coerce_operation(instance_path, operation, expected):
    out = coerce(instance_path, [operation])
    assert isinstance(out, RequestEnvelope)
    header = out.instance.header
    for key, value in expected.items():
        got = _value(header, key)
        assert (list(got) if isinstance(value, list) else got) == value, key


def test_coerce_leaves_the_received_header_alone(instance_path):
    env = envelope(instance_path)
    original = env.instance.header
    stage = CoerceStage("s", CoerceConfig(operations=[{"set": "InstitutionName", "value": "X"}]))
    out = stage(env)
    assert out.instance.edited and not env.instance.edited
    assert original.InstitutionName == "St. Example Hospital"
    assert out.instance.path == env.instance.path  # pixel data still comes from the received file


def test_coerce_without_a_change_is_not_an_edit(instance_path):
    env = envelope(instance_path)
    out = CoerceStage("s", CoerceConfig(operations=[{"delete": ["OtherPatientNames"]}]))(env)
    assert out is env


def test_stage_match_gates_every_operation(instance_path):
    env = envelope(instance_path, calling="MR01")
    config = CoerceConfig(match={"calling_aet": "CT_*"}, operations=[{"set": "StationName", "value": "X"}])
    assert CoerceStage("s", config)(env) is env


@pytest.fixture
def map_table(tmp_path):
    path = tmp_path / "institutions.csv"
    path.write_text("old,new\nSt. Example Hospital,Hospital A\nOther,Hospital B\n")
    return path


@pytest.mark.parametrize(
    "value,unmapped,expected",
    [
        ("St. Example Hospital", "keep", "Hospital A"),
        ("Unknown Clinic", "keep", "Unknown Clinic"),
        ("Unknown Clinic", "empty", ""),
        ("Unknown Clinic", "delete", None),
        ("Unknown Clinic", "reject", Reject),
    ],
)
def test_coerce_map(tmp_path, instance_path, map_table, value, unmapped, expected):
    env = envelope(instance_path)
    first = CoerceStage("s0", CoerceConfig(operations=[{"set": "InstitutionName", "value": value}]))(env)
    stage = CoerceStage(
        "s1",
        CoerceConfig(
            operations=[
                {"map": "InstitutionName", "table": str(map_table), "unmapped": unmapped, "reject_status": 0xA901}
            ]
        ),
    )
    out = stage(first)
    if expected is Reject:
        assert isinstance(out, Reject) and out.status == 0xA901
        assert "not in institutions.csv" in out.reason
        return
    assert out.instance.header.get("InstitutionName") == expected


@pytest.mark.parametrize(
    "operation,message",
    [
        ({"set": "StationNam", "value": "x"}, "'StationNam' is not a DICOM keyword"),
        ({"set": "StationName"}, "set needs a value"),
        ({"set": "StationName", "value": "{calling}"}, "placeholder {calling}"),
        ({"delete": ["(0002,0010)"]}, "file meta"),
        ({"delete": ["(7FE0,xxxx)"]}, "pixel data"),
        ({"copy": "PatientID"}, "copy needs to ="),
        ({"replace": "PatientID", "pattern": "("}, "missing"),
        ({"set": "StationName", "value": "x", "delete": ["PatientID"]}, "exactly one of"),
        ({}, "found none"),
        ({"set": "StationName", "value": "x", "match": {"Modalty": "CT"}}, "'Modalty' is not a DICOM keyword"),
    ],
)
def test_coerce_config_errors(operation, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        CoerceConfig(operations=[operation])


def test_a_missing_map_table_is_an_environment_finding():
    config = CoerceConfig(operations=[{"map": "InstitutionName", "table": "/nonexistent.csv"}])
    ((location, message, severity),) = config.environment_problems()
    assert (location, severity) == ("operations[0].table", "error") and "cannot read lookup table" in message


# -- route ---------------------------------------------------------------------

RULES = [
    {"match": {"Modality": "MR"}, "backends": ["mr_ai"]},
    {"match": {"calling_aet": "CT_*"}, "backends": ["ct_ai", "pacs"]},
    {"match": {"StudyDescription": {"regex": "(?i)chest"}}, "backends": ["chest", "pacs"], "stop": True},
    {"match": {"Modality": "CT"}, "backends": ["never_reached"]},
]


@pytest.mark.parametrize(
    "rules,default,calling,expected",
    [
        (RULES, None, "CT_SCANNER1", ("ct_ai", "pacs", "chest")),  # dedup, stop before the last rule
        (RULES, None, "OTHER", ("chest", "pacs")),
        (RULES[:1], ["archive"], "CT_SCANNER1", ("archive",)),  # nothing matched: default
        (RULES[:1], None, "CT_SCANNER1", Drop),  # nothing matched, no default
        ([{"match": {"Modality": "CT"}, "backends": ["a"], "stop": True}] + RULES, None, "CT_SCANNER1", ("a",)),
    ],
)
def test_route(instance_path, rules, default, calling, expected):
    stage = RouteStage("p.middleware[0](route)", RouteConfig(rules=rules, default=default))
    out = stage(envelope(instance_path, calling=calling))
    if expected is Drop:
        assert isinstance(out, Drop) and "no routing rule matched" in out.reason
    else:
        assert out.backends == expected
        assert out.audit[-1].action == "route"


def test_route_references_every_backend():
    config = RouteConfig(rules=RULES, default=["archive"])
    refs = dict(config.backend_references())
    assert refs["rules[1].backends[0]"] == "ct_ai"
    assert refs["default[0]"] == "archive"


def test_delete_private_reaches_into_sequences_and_leaves_other_elements_as_read(tmp_path):
    from pydicom import Dataset, dcmread
    from pydicom.dataelem import RawDataElement
    from pydicom.sequence import Sequence

    path = write_rich_study(tmp_path, series=1, per_series=1)[0]
    ds = dcmread(path)
    item = Dataset()
    item.CodeValue = "1"
    item.add_new(0x00190010, "LO", "ACME 1.0")
    item.add_new(0x00191001, "LO", "inside an item")
    ds.ProcedureCodeSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    out = coerce(path, [{"delete": ["private"]}])
    header = out.instance.header
    assert not [t for t in header.keys() if t >> 16 & 1]
    (kept,) = header.ProcedureCodeSequence
    assert kept.CodeValue == "1" and not [t for t in kept.keys() if t >> 16 & 1]
    assert isinstance(header.get_item(0x00081030, keep_deferred=True), RawDataElement)  # StudyDescription, untouched
