"""The anonymize stage's element-stream way gives the bytes and the report of the data set way."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.errors import InvalidDicomError

from router.envelope import RequestEnvelope
from router.middleware.anonymize_stream import open_stream
from router.spool.edited_copies import edited_by_reference, write_edited_copy
from router.spool.element_stream import NotStreamable
from router.spool.encoded_versions import write_edited
from router.spool.splice import write_spliced
from tests.support.corpus import MORE_PYDICOM_FILES, PYDICOM_FILES, charset_files, pydicom_files
from tests.support.deid import envelope_for, key_file, stage
from tests.support.richgen import rich_ct, write_rich_study

OPTION_SETS = [
    [],
    ["retain_longitudinal_modified_dates"],
    ["clean_descriptors", "clean_structured_content", "clean_graphics"],
    ["retain_safe_private", "retain_uids", "retain_device_identity"],
    ["retain_patient_characteristics", "retain_institution_identity", "retain_longitudinal_full_dates"],
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("stream")
    rich = write_rich_study(root / "rich", "P001", series=1, per_series=2)
    rich += write_rich_study(root / "implicit", "P002", series=1, per_series=2, implicit=True)
    trailing = root / "trailing.dcm"
    ds = dcmread(rich[0])
    ds.add_new(0xFFFAFFFA, "SQ", [])
    ds.save_as(trailing, enforce_file_format=True)
    others = pydicom_files(PYDICOM_FILES + MORE_PYDICOM_FILES) + charset_files() + [trailing]
    return {"rich": rich, "others": others}


def _stage(directory: Path, options: list[str]):
    config = {"key_file": key_file(directory), "options": options}
    if "retain_safe_private" in options:
        config["safe_private"] = [{"group": 0x0011, "creator": "SAFE VENDOR"}]
    return stage(**config)


def _data_set_way(anonymizer, path: Path) -> tuple[bytes, object]:
    envelope = envelope_for(path)
    ds = envelope.instance.editable_header()
    report = anonymizer.deidentifier.apply(ds)
    out = io.BytesIO()
    write_spliced(path, ds, envelope.instance.layout, out)
    return out.getvalue(), report


def _stream_way(anonymizer, path: Path) -> tuple[bytes, object]:
    encoded, report = open_stream(path).deidentify(anonymizer.deidentifier)
    out = io.BytesIO()
    write_edited(envelope_for(path).instance.with_encoded(encoded), out)
    return out.getvalue(), report


def _same_report(a, b) -> bool:
    fields = ("patient_id", "patient_name", "uids", "date_shift_days", "actions")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
def test_the_stream_way_writes_what_the_data_set_way_writes(tmp_path, corpus, options):
    anonymizer = _stage(tmp_path, options)
    streamed = []
    for path in corpus["rich"] + corpus["others"]:
        try:
            fast, fast_report = _stream_way(anonymizer, path)
        except NotStreamable:
            continue
        reference, report = _data_set_way(anonymizer, path)
        assert fast == reference, path
        assert _same_report(fast_report, report), path
        streamed.append(path)
    assert set(corpus["rich"]) <= set(streamed)  # the common case takes the stream way
    assert len(streamed) >= len(corpus["rich"]) + 6


def test_pixel_data_read_with_a_small_header_is_written_as_the_file_holds_it(tmp_path, corpus):
    anonymizer = _stage(tmp_path, [])
    read_whole = 0
    for path in corpus["rich"] + corpus["others"]:
        try:
            encoded, _ = open_stream(path).deidentify(anonymizer.deidentifier)
        except NotStreamable:
            continue
        if encoded.pixel_data is None:
            continue
        read_whole += 1
        instance = envelope_for(path).instance
        from_memory, from_file = io.BytesIO(), io.BytesIO()
        write_edited(instance.with_encoded(encoded), from_memory)
        write_edited(instance.with_encoded(replace(encoded, pixel_data=None)), from_file)
        assert from_memory.getvalue() == from_file.getvalue(), path
    assert read_whole >= 3


def test_a_version_kept_by_reference_is_written_out_as_either_way_writes_it(tmp_path, corpus, monkeypatch):
    """The copy delivery writes of a version kept by reference (header, then the received
    file's pixel data) is byte for byte the version the stream way, or the data set way, writes whole."""
    monkeypatch.setattr("router.spool.edited_copies.MIN_PIXEL_BYTES", 0)
    anonymizer = _stage(tmp_path, [])
    kept = {"stream": 0, "data set": 0}
    for index, path in enumerate(corpus["rich"] + corpus["others"]):
        try:
            instance = envelope_for(path).instance
        except (InvalidDicomError, AttributeError):
            continue  # no file meta or no SOP Instance UID: never a spool file
        versions = {}
        try:
            versions["stream"] = instance.with_encoded(open_stream(path).deidentify(anonymizer.deidentifier)[0])
        except NotStreamable:
            pass
        header = instance.editable_header()
        anonymizer.deidentifier.apply(header)
        versions["data set"] = instance.with_header(header)
        for way, version in versions.items():
            edited = edited_by_reference(version, str(path), path.stat().st_size, "unchecked")
            if edited is None:
                continue
            kept[way] += 1
            expected = io.BytesIO()
            write_edited(version, expected)
            copy = tmp_path / f"{index}.dcm.edit0.dcm"
            copy.unlink(missing_ok=True)
            write_edited_copy(str(copy), edited, len(expected.getvalue()))
            assert copy.read_bytes() == expected.getvalue(), (way, path)
    assert kept["stream"] >= len(corpus["rich"]) + 3 and kept["data set"] >= len(corpus["rich"]) + 10


def test_what_the_stream_way_leaves_to_the_data_set_way(corpus):
    for name in ("MR_small_bigendian.dcm",):
        with pytest.raises(NotStreamable):
            open_stream(get_testdata_file(name))
    with pytest.raises(NotStreamable, match="follow the pixel data"):
        open_stream(corpus["others"][-1])


def test_the_stage_takes_the_stream_way_and_a_later_stage_reads_the_result(tmp_path, corpus):
    anonymizer = _stage(tmp_path, ["retain_longitudinal_modified_dates"])
    result = anonymizer(envelope_for(corpus["rich"][0]))
    assert isinstance(result, RequestEnvelope)
    assert result.instance.encoded is not None and result.instance.edited
    header = result.instance.header  # read back from the encoded bytes, for a later stage
    assert header.PatientIdentityRemoved == "YES" and header.PatientID.startswith("ANON")
    assert "PixelData" not in header
    fast, _ = _stream_way(anonymizer, corpus["rich"][0])
    out = io.BytesIO()
    write_spliced(corpus["rich"][0], result.instance.editable_header(), result.instance.layout, out)
    assert out.getvalue() == fast


def test_a_non_ascii_name_takes_the_data_set_way_with_the_same_result(tmp_path):
    path = tmp_path / "latin1.dcm"
    ds = rich_ct("P003", "1.2.3.4", "1.2.3.4.5", "1.2.3.4.6", 0, "20240101")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.save_as(path, enforce_file_format=True)
    anonymizer = _stage(tmp_path, [])
    with pytest.raises(NotStreamable):
        open_stream(path).deidentify(anonymizer.deidentifier)
    result = anonymizer(envelope_for(path))
    assert result.instance.encoded is None and str(result.instance.header.PatientName).startswith("ANON")


def test_damaged_headers_are_left_to_the_data_set_way_or_give_its_result(tmp_path, corpus):
    """Garbled or truncated headers (a fixed random sample of 400, in both syntaxes): the stream
    way either says NotStreamable, or gives what the data set way gives; no other error."""
    import random

    anonymizer = _stage(tmp_path, ["retain_longitudinal_modified_dates", "clean_descriptors"])
    generator = random.Random(21)
    damaged = tmp_path / "damaged.dcm"
    outcomes = {"same": 0, "not streamable": 0}
    for original in (path.read_bytes() for path in (corpus["rich"][0], corpus["rich"][-1])):
        for _ in range(200):
            data = bytearray(original)
            offset = generator.randrange(128, 3000)
            if generator.random() < 0.3:
                data = data[:offset]
            else:
                for i in range(offset, min(offset + generator.randrange(1, 9), len(data))):
                    data[i] = generator.randrange(256)
            damaged.write_bytes(bytes(data))
            try:
                encoded, report = open_stream(damaged).deidentify(anonymizer.deidentifier)
            except NotStreamable:
                outcomes["not streamable"] += 1
                continue
            envelope = envelope_for(damaged)
            ds = envelope.instance.editable_header()
            expected = anonymizer.deidentifier.apply(ds)
            reference, streamed = io.BytesIO(), io.BytesIO()
            write_spliced(damaged, ds, envelope.instance.layout, reference)
            write_edited(envelope.instance.with_encoded(encoded), streamed)
            assert streamed.getvalue() == reference.getvalue() and _same_report(report, expected)
            outcomes["same"] += 1
    assert outcomes["same"] and outcomes["not streamable"]
