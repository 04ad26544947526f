"""``anonymize``: one golden case per PS3.15 option, keys, dates, pseudonyms, policies, validity."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from collections import defaultdict

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.uid import SecondaryCaptureImageStorage

from router.deid.profile import OPTIONS
from router.envelope import Reject, RequestEnvelope
from router.middleware.anonymize import AnonymizeConfig
from tests.support.deid import (
    KEY_B,
    all_values,
    anonymize_files,
    dciodvfy_errors,
    envelope_for,
    key_file,
    raw_pixel_bytes,
    stage,
)
from tests.support.richgen import write_rich_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """P001: two series of three on 2024-03-15; each instance references its series' first."""
    return write_rich_study(tmp_path_factory.mktemp("rich"), "P001", series=2, per_series=3)


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return key_file(tmp_path_factory.mktemp("key"))


def one(study, tmp_path, key, **config):
    (out,) = anonymize_files(study[1:2], tmp_path / "out", key_file=key, **config)
    return dcmread(study[1]), dcmread(out)


def codes(ds):
    return sorted(item.CodeValue for item in ds.get("DeidentificationMethodCodeSequence", []))


KEPT, CHANGED, ABSENT, EMPTY = "kept", "changed", "absent", "empty"
SAFE = [{"group": 0x0011, "creator": "SAFE VENDOR", "elements": [0x10]}]

GOLDEN = {
    None: {
        "PatientName": CHANGED,
        "PatientID": CHANGED,
        "StudyDate": EMPTY,
        "StudyTime": EMPTY,
        "SeriesDate": "19000101",
        "InstitutionName": EMPTY,
        "InstitutionAddress": ABSENT,
        "StationName": EMPTY,
        "DeviceSerialNumber": EMPTY,
        "ReferringPhysicianName": EMPTY,
        "PatientAge": ABSENT,
        "PatientSex": EMPTY,
        "StudyDescription": ABSENT,
        "SeriesDescription": ABSENT,
        "PatientComments": ABSENT,
        "AcquisitionContextSequence": ABSENT,
        "OtherPatientIDsSequence": ABSENT,
        "(6000,3000)": ABSENT,
        "(6000,0010)": ABSENT,
        "(0009,1001)": ABSENT,
        "(0011,1010)": ABSENT,
        "SOPInstanceUID": CHANGED,
        "StudyInstanceUID": CHANGED,
        "FrameOfReferenceUID": CHANGED,
        "Manufacturer": KEPT,
        "Rows": KEPT,
        "LongitudinalTemporalInformationModified": "REMOVED",
        "codes": ["113100"],
    },
    "retain_safe_private": {
        "(0011,0010)": KEPT,
        "(0011,1010)": KEPT,
        "(0011,1011)": ABSENT,
        "(0009,1001)": ABSENT,
        "codes": ["113100", "113111"],
    },
    "retain_uids": {
        "SOPInstanceUID": KEPT,
        "StudyInstanceUID": KEPT,
        "SeriesInstanceUID": KEPT,
        "FrameOfReferenceUID": KEPT,
        "codes": ["113100", "113110"],
    },
    "retain_device_identity": {
        "StationName": KEPT,
        "DeviceSerialNumber": KEPT,
        "meta SourceApplicationEntityTitle": KEPT,
        "codes": ["113100", "113109"],
    },
    "retain_institution_identity": {
        "InstitutionName": KEPT,
        "InstitutionAddress": KEPT,
        "InstitutionalDepartmentName": KEPT,
        "codes": ["113100", "113112"],
    },
    "retain_patient_characteristics": {
        "PatientSex": KEPT,
        "PatientAge": KEPT,
        "PatientWeight": KEPT,
        "PatientSize": KEPT,
        "codes": ["113100", "113108"],
    },
    "retain_longitudinal_full_dates": {
        "StudyDate": KEPT,
        "StudyTime": KEPT,
        "SeriesDate": KEPT,
        "AcquisitionDateTime": KEPT,
        "PatientBirthDate": EMPTY,
        "LongitudinalTemporalInformationModified": "UNMODIFIED",
        "codes": ["113100", "113106"],
    },
    "retain_longitudinal_modified_dates": {
        "StudyDate": CHANGED,
        "StudyTime": KEPT,
        "AcquisitionDateTime": CHANGED,
        "LongitudinalTemporalInformationModified": "MODIFIED",
        "codes": ["113100", "113107"],
    },
    "clean_descriptors": {
        "StudyDescription": "CT chest for",
        "PatientComments": "prefers morning slots",
        "ImageComments": "Reviewed for",
        "AdditionalPatientHistory": "Patient referred after fall",
        "SeriesDescription": KEPT,
        "codes": ["113100", "113105"],
    },
    "clean_structured_content": {
        "AcquisitionContextSequence[0].TextValue": "Scanned supine",
        "codes": ["113100", "113104"],
    },
    "clean_graphics": {"(6000,3000)": KEPT, "(6000,0010)": KEPT, "codes": ["113100", "113103"]},
}


def _get(ds, key):
    if key == "codes":
        return codes(ds)
    if key.startswith("meta "):
        return ds.file_meta.get(key[5:])
    if "[0]." in key:
        seq, inner = key.split("[0].")
        return ds[seq][0].get(inner) if seq in ds else None
    if key.startswith("("):
        tag = int(key[1:5] + key[6:10], 16)
        return ds[tag].value if tag in ds else None
    return ds.get(key) if key in ds else None


@pytest.mark.parametrize("option", GOLDEN)
def test_golden_per_option(tmp_path, study, key, option):
    options = [option] if option else []
    safe = SAFE if option == "retain_safe_private" else []
    before, after = one(study, tmp_path, key, options=options, safe_private=safe)
    assert after.PatientIdentityRemoved == "YES"
    for attribute, expected in GOLDEN[option].items():
        old, new = _get(before, attribute), _get(after, attribute)
        if expected == KEPT:
            assert new == old and new is not None, attribute
        elif expected == CHANGED:
            assert new not in (None, "", old), attribute
        elif expected == ABSENT:
            assert new is None, attribute
        elif expected == EMPTY:
            assert new in ("", None) and attribute in after, attribute
        else:
            assert (list(new) if attribute == "codes" else new) == expected, attribute
    assert raw_pixel_bytes(tmp_path / "out" / study[1].name) == raw_pixel_bytes(study[1])


def test_basic_profile_leaves_no_identifier_behind(tmp_path, study, key):
    before, after = one(study, tmp_path, key)
    identifying = [
        "DOE",
        "JANE",
        "P001",
        "19700312",
        "Example",
        "CTSCAN01",
        "SN-998877",
        "WHO^JOHN",
        "HOUSE",
        "TECH",
        "MRNP001",
        "Patient Lane",
        "20240315",
        "101000",
        "AP001240315",
        before.SOPInstanceUID,
        before.StudyInstanceUID,
        before.SeriesInstanceUID,
        before.ReferencedImageSequence[0].ReferencedSOPInstanceUID,
        before.FrameOfReferenceUID,
    ]
    text = "\n".join(all_values(after))
    assert [token for token in identifying if token in text] == []
    assert after.preamble == b"\0" * 128


def test_same_key_same_result_other_key_other_result(tmp_path, study, key):
    a = [
        dcmread(p)
        for p in anonymize_files(study, tmp_path / "a", key_file=key, options=["retain_longitudinal_modified_dates"])
    ]
    b = [
        dcmread(p)
        for p in anonymize_files(study, tmp_path / "b", key_file=key, options=["retain_longitudinal_modified_dates"])
    ]
    other = key_file(tmp_path, KEY_B, "other.key")
    c = [
        dcmread(p)
        for p in anonymize_files(study, tmp_path / "c", key_file=other, options=["retain_longitudinal_modified_dates"])
    ]
    for x, y, z in zip(a, b, c, strict=True):
        for attribute in (
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "PatientID",
            "StudyDate",
            "AcquisitionDateTime",
        ):
            assert x.get(attribute) == y.get(attribute), attribute
        for attribute in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "StudyDate"):
            assert x.get(attribute) != z.get(attribute), attribute


def test_keyed_uids_are_the_same_in_another_process(tmp_path, study, key):
    (out,) = anonymize_files(study[:1], tmp_path / "out", key_file=key)
    program = (
        "import sys; from router.deid.keys import Keyring, read_key; "
        "print(Keyring(read_key(sys.argv[1])).uid(sys.argv[2]))"
    )
    original = dcmread(study[0]).SOPInstanceUID
    result = subprocess.run(
        [sys.executable, "-c", program, str(key), original], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == dcmread(out).SOPInstanceUID
    assert len(result.stdout.strip()) <= 64 and result.stdout.startswith("2.25.")


def test_structure_and_references_survive(tmp_path, key):
    p1 = write_rich_study(tmp_path / "in1", "P001", series=2, per_series=3)
    p2 = write_rich_study(tmp_path / "in2", "P002", series=1, per_series=2)
    inputs = p1 + p2
    outputs = anonymize_files(inputs, tmp_path / "out", key_file=key)
    before = [dcmread(p) for p in inputs]
    after = [dcmread(p) for p in outputs]

    def shape(datasets):
        tree = defaultdict(lambda: defaultdict(set))
        for ds in datasets:
            tree[ds.StudyInstanceUID][ds.SeriesInstanceUID].add(ds.SOPInstanceUID)
        return sorted(sorted(len(s) for s in series.values()) for series in tree.values())

    assert shape(after) == shape(before)
    assert len({ds.SOPInstanceUID for ds in after}) == len(after)
    assert len({ds.PatientID for ds in after}) == 2
    by_original = {b.SOPInstanceUID: a.SOPInstanceUID for b, a in zip(before, after, strict=True)}
    for b, a in zip(before, after, strict=True):
        if "ReferencedImageSequence" in b:
            target = b.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == by_original[target]
            assert a.SourceImageSequence[0].ReferencedSOPInstanceUID == by_original[target]
        assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID


def _date(text):
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def test_date_shift_keeps_intervals_within_a_patient(tmp_path, key):
    march = write_rich_study(tmp_path / "m", "P001", series=1, per_series=1, study_date="20240315")
    april = write_rich_study(tmp_path / "a", "P001", series=1, per_series=1, study_date="20240415")
    other = write_rich_study(tmp_path / "o", "P002", series=1, per_series=1, study_date="20240315")
    options = {"options": ["retain_longitudinal_modified_dates"], "date_shift_days": (10, 400)}
    m, a, o = (
        dcmread(anonymize_files(p, tmp_path / n, key_file=key, **options)[0])
        for p, n in ((march, "mo"), (april, "ao"), (other, "oo"))
    )
    assert (_date(a.StudyDate) - _date(m.StudyDate)).days == 31
    shift = (_date(m.StudyDate) - dt.date(2024, 3, 15)).days
    assert -400 <= shift <= -10
    assert m.StudyTime == "101000"  # whole days: times stay
    assert m.AcquisitionDateTime == m.StudyDate + "101700.000000"
    assert m.InstanceCreationDate == m.StudyDate
    assert o.PatientID != m.PatientID


@pytest.fixture
def patient_table(tmp_path):
    path = tmp_path / "patients.csv"
    path.write_text("PatientID,PseudonymID,PseudonymName\nP001,SUBJ-0001,SUBJECT^ONE\n")
    return path


@pytest.mark.parametrize(
    "patient,unmapped,expected",
    [
        ("P001", "reject", ("SUBJ-0001", "SUBJECT^ONE")),
        ("P002", "reject", Reject),
        ("P002", "pseudonym", "keyed"),
    ],
)
def test_patient_table(tmp_path, key, patient_table, patient, unmapped, expected):
    (path,) = write_rich_study(tmp_path / "in", patient, series=1, per_series=1)
    out = stage(key_file=key, patient_table=patient_table, unmapped_patient=unmapped)(envelope_for(path))
    if expected is Reject:
        assert isinstance(out, Reject) and out.status == 0xA900 and "P002" in out.reason
        return
    header = out.instance.header
    if expected == "keyed":
        assert header.PatientID.startswith("ANON") and header.PatientID == str(header.PatientName)
    else:
        assert (header.PatientID, str(header.PatientName)) == expected


@pytest.mark.parametrize(
    "burned_in,sop_class,policy,expected",
    [
        ("YES", None, "reject", Reject),
        ("YES", None, "quarantine", "held"),
        ("YES", None, "pass", "sent"),
        (None, SecondaryCaptureImageStorage, "quarantine", "held"),
        (None, None, "quarantine", "sent"),  # CT without the attribute: not a burned-in prone class
        ("NO", SecondaryCaptureImageStorage, "reject", "sent"),
    ],
)
def test_burned_in_annotation_policy(tmp_path, key, burned_in, sop_class, policy, expected):
    (path,) = write_rich_study(tmp_path / "in", series=1, per_series=1)
    ds = dcmread(path)
    del ds.BurnedInAnnotation
    if burned_in:
        ds.BurnedInAnnotation = burned_in
    if sop_class:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.save_as(path)
    out = stage(key_file=key, burned_in_annotation=policy)(envelope_for(path))
    if expected is Reject:
        assert isinstance(out, Reject) and "BurnedInAnnotation" in out.reason
    elif expected == "held":
        assert isinstance(out, RequestEnvelope) and "BurnedInAnnotation" in out.hold_reason
        assert out.instance.header.PatientIdentityRemoved == "YES"
    else:
        assert isinstance(out, RequestEnvelope) and out.hold_reason is None


def test_mapping_file_is_private_and_complete(tmp_path, study, key):
    mapping = tmp_path / "reid.csv"
    mapping.write_text("")
    mapping.chmod(0o644)
    outputs = anonymize_files(
        study[:2], tmp_path / "out", key_file=key, mapping_file=mapping, options=["retain_longitudinal_modified_dates"]
    )
    assert stat.S_IMODE(os.stat(mapping).st_mode) == 0o600
    lines = mapping.read_text().splitlines()
    assert lines[0] == "recorded_at,kind,original,pseudonym,assoc_id,calling_aet"
    rows = [line.split(",") for line in lines[1:]]
    kinds = [r[1] for r in rows]
    assert kinds.count("patient_id") == 1 and kinds.count("study_uid") == 1 and kinds.count("series_uid") == 1
    assert kinds.count("sop_instance_uid") == 2 and kinds.count("date_shift_days") == 1
    first = dcmread(outputs[0])
    assert ["patient_id", "P001", first.PatientID] == rows[kinds.index("patient_id")][1:4]
    assert [dcmread(study[0]).SOPInstanceUID, first.SOPInstanceUID] == rows[kinds.index("sop_instance_uid")][2:4]


def test_dry_run_copy_writes_no_mapping(tmp_path, study, key):
    mapping = tmp_path / "reid.csv"
    quiet = stage(key_file=key, mapping_file=mapping).without_side_effects()
    quiet(envelope_for(study[0]))
    assert not mapping.exists()


@pytest.mark.parametrize(
    "config,message",
    [
        ({"options": ["retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"]}, "exclude each other"),
        ({"options": ["retain_all"]}, "options.0"),
        ({"safe_private": SAFE}, "retain_safe_private option, which is not selected"),
        ({"options": ["retain_safe_private"], "safe_private": [{"group": 0x0010, "creator": "X"}]}, "not private"),
        ({"date_shift_days": (10, 5)}, "date_shift_days"),
    ],
)
def test_config_errors(tmp_path, key, config, message):
    config.setdefault("key_file", key)
    with pytest.raises(ValidationError, match=message):
        AnonymizeConfig(**config)


@pytest.mark.parametrize(
    "config,location,message",
    [
        ({"key_file": "/nonexistent/deid.key"}, "key_file", "cannot read key file"),
        ({"key_file": "SHORT"}, "key_file", "use at least 16"),
        ({"patient_table": "/nonexistent.csv"}, "patient_table", "cannot read lookup table"),
    ],
)
def test_files_a_stage_names_are_environment_findings_not_schema_errors(tmp_path, key, config, location, message):
    """A key file made later with `keygen` (or a table made later) does not fail the schema
    tier; the environment tier reports it as an error."""
    if config.get("key_file") == "SHORT":
        config["key_file"] = key_file(tmp_path, "short\n", "short.key")
    config.setdefault("key_file", key)
    problems = AnonymizeConfig(**config).environment_problems()
    assert [(k, severity) for k, m, severity in problems if message in m] == [(location, "error")]


@pytest.mark.dicom3tools
@pytest.mark.parametrize("option", [None, *OPTIONS])
def test_outputs_validate_as_well_as_inputs(tmp_path, study, key, option):
    options = [option] if option else []
    safe = SAFE if option == "retain_safe_private" else []
    (out,) = anonymize_files(study[1:2], tmp_path / "out", key_file=key, options=options, safe_private=safe)
    assert dciodvfy_errors(out) - dciodvfy_errors(study[1]) == set()


def test_a_keyring_never_shows_its_key():
    from router.deid.keys import Keyring

    keyring = Keyring(b"very-secret-key-bytes-0123456789")
    assert "very-secret" not in repr(keyring) and "very-secret" not in str(keyring)
