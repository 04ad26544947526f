"""The project's PS3.15 Table E.1-1 against an independent machine-readable edition of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.datadict import keyword_for_tag

from router.deid import profile
from router.deid.profile import OPTIONS, Row, resolve, table

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "ps315-annex-e-attributes.json"
COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}


def _reference_key(tag: str) -> str:
    if tag.upper().startswith("(GGGG"):
        return "private"
    return tag.strip("()").upper().replace("X", "x")


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"the reference edition of Table E.1-1 is not beside the project ({REFERENCE})")
    return {_reference_key(r["tag"]): r for r in json.loads(REFERENCE.read_text())}


def test_same_attributes(reference):
    ours = {row.pattern.upper().replace("X", "x") if row.pattern != "private" else "private" for row in table()}
    assert ours == set(reference)
    assert len(table()) == len(reference)


def test_same_actions_row_by_row(reference):
    mismatches = []
    for row in table():
        key = row.pattern.upper().replace("X", "x") if row.pattern != "private" else "private"
        ref = reference[key]
        expected_options = {COLUMNS[c]: ref[c] for c in COLUMNS if ref.get(c)}
        if row.basic != ref["basicProfile"]:
            mismatches.append(f"{key}: basic {row.basic} != {ref['basicProfile']}")
        if row.options != expected_options:
            mismatches.append(f"{key}: options {row.options} != {expected_options}")
        if row.in_std_iod != (ref["stdCompIOD"] == "Y"):
            mismatches.append(f"{key}: in standard IOD {row.in_std_iod} != {ref['stdCompIOD']}")
    assert mismatches == []


def test_keywords_are_the_dictionary_keywords():
    for row in table():
        if row.tag is not None and row.keyword is not None:
            assert keyword_for_tag(row.tag) == row.keyword, row


def test_every_option_appears_in_the_table():
    used = {name for row in table() for name in row.options}
    assert used == set(OPTIONS)


@pytest.mark.parametrize(
    "options,tag,action,reason",
    [
        ((), 0x00100010, "Z", "basic profile"),  # PatientName (pseudonymized by the stage)
        ((), 0x00080018, "U", "basic profile"),
        (("retain_uids",), 0x00080018, "K", "retain_uids"),
        ((), 0x00080021, "D", "basic profile (X/D)"),  # SeriesDate
        ((), 0x00080080, "Z", "basic profile (X/Z/D)"),  # InstitutionName
        (("retain_institution_identity",), 0x00080080, "K", "retain_institution_identity"),
        (("retain_longitudinal_modified_dates",), 0x00080020, "C", "retain_longitudinal_modified_dates"),
        (("retain_longitudinal_full_dates",), 0x00080020, "K", "retain_longitudinal_full_dates"),
        ((), 0x00081140, "U*", "basic profile (X/Z/U*)"),  # ReferencedImageSequence
        # Allergies: patient characteristics K... here C from both options; K would win over C
        (("retain_patient_characteristics", "clean_descriptors"), 0x00102110, "C", "retain_patient_characteristics"),
        (("retain_patient_characteristics",), 0x00101010, "K", "retain_patient_characteristics"),  # PatientAge
        (("clean_graphics",), 0x60003000, "C", "clean_graphics"),  # overlay data (60xx,3000), group 6000
        (("clean_graphics",), 0x60023000, "C", "clean_graphics"),  # group 6002 matches the same row
        ((), 0x50001234, "X", "basic profile"),  # curve data (50xx,xxxx)
    ],
)
def test_resolve(options, tag, action, reason):
    decision = resolve(frozenset(options)).decide(tag)[1]
    assert (decision.action, decision.reason) == (action, reason)


def test_keep_wins_over_clean():
    row = Row("0010,2203", "X/Z", True, {"retain_patient_characteristics": "K", "clean_descriptors": "C"}, None, "x")
    assert profile.decide_row(row, frozenset({"clean_descriptors", "retain_patient_characteristics"})).action == "K"


def test_unlisted_attributes_are_not_decided():
    assert resolve(frozenset()).decide(0x00280010) is None  # Rows


@pytest.mark.parametrize(
    "options,message",
    [
        (("retain_everything",), "unknown option"),
        (("retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"), "exclude each other"),
    ],
)
def test_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        resolve(frozenset(options))
