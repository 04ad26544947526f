"""The coerce stage's element-stream way writes the bytes of the data set way."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread

from router.middleware.coerce import CoerceConfig, build_coerce
from router.spool.element_stream import NotStreamable
from router.spool.encoded_versions import write_edited
from router.spool.splice import write_spliced
from tests.support.corpus import MORE_PYDICOM_FILES, PYDICOM_FILES, charset_files, pydicom_files
from tests.support.deid import envelope_for
from tests.support.richgen import write_rich_study

OPERATION_SETS = {
    "station-and-private": [{"set": "StationName", "value": "{calling_aet}"}, {"delete": ["private"]}],
    "set-delete-copy": [
        {"set": "InstitutionName", "value": "General Hospital"},
        {"set": "OtherPatientIDs", "value": "A\\B"},
        {"delete": ["ReferringPhysicianName", "(0009,xxxx)", "(0029,xxxx)"]},
        {"copy": "PatientID", "to": "PatientComments"},
        {"set": "StationName", "value": "ST1"},
    ],
    "templates-replace-map": [
        {"set": "StudyDescription", "value": "{PatientID}-{Modality}-{calling_aet}"},
        {"replace": "AccessionNumber", "pattern": "^(.)", "with": "X"},
        {"replace": "PatientName", "pattern": "\\^", "with": " "},
        {"map": "Modality", "table": "modalities.csv", "unmapped": "keep"},
    ],
    "nothing-applies": [{"delete": ["(6001,xxxx)"]}, {"copy": "PatientComments", "to": "StudyComments"}],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("coerce-stream")
    rich = write_rich_study(root / "rich", "P001", series=1, per_series=2)
    rich += write_rich_study(root / "implicit", "P002", series=1, per_series=2, implicit=True)
    files = rich + [_space_padded_uid(rich[0], root / "space-padded.dcm")]
    files += pydicom_files(PYDICOM_FILES + MORE_PYDICOM_FILES) + charset_files()
    return [p for p in files if _part10_instance(p)]


def _space_padded_uid(source: Path, target: Path) -> Path:
    """``source`` with an odd-length SOP Instance UID padded with a space, not the NUL pydicom
    writes: the data set way reads that UID (for the file meta) and writes it back NUL-padded."""
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.456"
    ds.save_as(target, enforce_file_format=True)
    data = target.read_bytes()
    target.write_bytes(data.replace(b"1.2.3.456\0", b"1.2.3.456 "))
    return target


def _part10_instance(path: Path) -> bool:
    ds = dcmread(path, stop_before_pixels=True, force=True)
    return "SOPInstanceUID" in ds and "TransferSyntaxUID" in getattr(ds, "file_meta", {})


def _stage(tmp_path: Path, operations: list[dict]):
    (tmp_path / "modalities.csv").write_text("old,new\nCT,CT-MAPPED\nMR,MR-MAPPED\n")
    ops = [dict(op, table=str(tmp_path / op["table"])) if "table" in op else op for op in operations]
    return build_coerce("coerce", CoerceConfig(operations=ops))


def _data_set_way(stage, path: Path) -> bytes | None:
    envelope = envelope_for(path)
    ds = envelope.editable_dataset()
    if not stage._apply(envelope, ds, lambda: envelope):
        return None
    out = io.BytesIO()
    write_spliced(path, ds, envelope.instance.layout, out)
    return out.getvalue()


def _stream_way(stage, path: Path) -> bytes | None:
    envelope = envelope_for(path)
    result = stage._streamed(envelope)
    if result is envelope:
        return None
    out = io.BytesIO()
    write_edited(result.instance, out)
    return out.getvalue()


@pytest.mark.parametrize("name", sorted(OPERATION_SETS))
def test_the_stream_way_writes_what_the_data_set_way_writes(tmp_path, corpus, name):
    stage = _stage(tmp_path, OPERATION_SETS[name])
    streamed = []
    for path in corpus:
        try:
            fast = _stream_way(stage, path)
        except NotStreamable:
            continue
        reference = _data_set_way(stage, path)
        assert fast == reference, f"{path.name}: the stream way differs"
        streamed.append(path.name)
    assert len(streamed) >= 12, streamed  # the rich study in both syntaxes, pydicom's files without group lengths


def test_the_stage_takes_the_stream_way_and_a_later_reader_sees_the_edit(tmp_path, corpus):
    stage = _stage(tmp_path, OPERATION_SETS["set-delete-copy"])
    envelope = envelope_for(corpus[0])
    result = stage(envelope)
    assert result.instance.encoded is not None  # the stream way
    header = result.instance.header
    assert header.InstitutionName == "General Hospital" and list(header.OtherPatientIDs) == ["A", "B"]
    assert header.PatientComments == dcmread(corpus[0]).PatientID and header.StationName == "ST1"
    assert "ReferringPhysicianName" not in header
    assert [e.detail for e in result.audit] == [
        "operations[0]: set InstitutionName; operations[1]: set OtherPatientIDs; operations[2]: deleted 4 attribute(s); "
        "operations[3]: copied PatientID to PatientComments; operations[4]: set StationName"
    ]


def test_an_operation_with_its_own_match_takes_the_data_set_way(tmp_path, corpus):
    stage = _stage(tmp_path, [{"set": "InstitutionName", "value": "X", "match": {"Modality": "CT"}}])
    assert not stage.streamable
    result = stage(envelope_for(corpus[0]))
    assert result.instance.encoded is None and result.instance.header.InstitutionName == "X"
