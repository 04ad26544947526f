"""The spliced writer's own element encoding gives the bytes pydicom's writer gives."""

from __future__ import annotations

import io

import pytest

import router.spool.splice as splice
from router.middleware.coerce import CoerceConfig, CoerceStage
from router.spool.raw_elements import element_bytes, file_meta_bytes
from tests.support.corpus import PYDICOM_FILES, charset_files, pydicom_files
from tests.support.deid import envelope_for, key_file, stage
from tests.support.richgen import write_rich_study


def _both_ways(instance) -> tuple[bytes, bytes]:
    fast = io.BytesIO()
    splice.write_spliced(instance.path, instance.header, instance.layout, fast)
    return fast.getvalue(), _through_pydicom(instance)


def _through_pydicom(instance) -> bytes:
    out = io.BytesIO()
    saved = splice.element_bytes, splice.file_meta_bytes
    splice.element_bytes = lambda element, implicit: None
    splice.file_meta_bytes = lambda meta: None
    try:
        splice.write_spliced(instance.path, instance.header, instance.layout, out)
    finally:
        splice.element_bytes, splice.file_meta_bytes = saved
    return out.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    study = write_rich_study(tmp_path_factory.mktemp("rich"), "P001", series=1, per_series=2)
    implicit = write_rich_study(tmp_path_factory.mktemp("rich-implicit"), "P002", series=1, per_series=1, implicit=True)
    return study + implicit + pydicom_files(PYDICOM_FILES) + charset_files()


@pytest.fixture(scope="module")
def anonymizer(tmp_path_factory):
    return stage(key_file=key_file(tmp_path_factory.mktemp("key")), options=["retain_longitudinal_modified_dates"])


def test_anonymized_headers_are_written_as_pydicom_writes_them(inputs, anonymizer):
    for path in inputs:
        edited = anonymizer(envelope_for(path))
        fast, reference = _both_ways(edited.instance)
        assert fast == reference, path


def test_coerced_headers_are_written_as_pydicom_writes_them(inputs):
    coerce = CoerceStage(
        "c",
        CoerceConfig(
            type="coerce",
            operations=[
                {"set": "InstitutionName", "value": "Hôpital Général"},
                {"set": "StationName", "value": "{calling_aet}"},
                {"set": "ImageType", "value": "DERIVED\\SECONDARY"},
                {"delete": ["private"]},
            ],
        ),
    )
    for path in inputs:
        edited = coerce(envelope_for(path))
        fast, reference = _both_ways(edited.instance)
        assert fast == reference, path


def test_what_it_leaves_to_pydicom(inputs):
    """Non-ASCII text, sequences and unknown-VR raw elements go to pydicom's writer."""
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.sequence import Sequence

    assert element_bytes(DataElement(0x00080080, "LO", "Hôpital"), implicit=False) is None
    assert element_bytes(DataElement(0x00081140, "SQ", Sequence([])), implicit=False) is None
    raw_un = RawDataElement(0x00180050, "UN", 2, b"1 ", 0, False, True)
    assert element_bytes(raw_un, implicit=False) is None
    assert element_bytes(DataElement(0x00080080, "LO", "ABC"), implicit=False) == b"\x08\x00\x80\x00LO\x04\x00ABC "
    assert (
        element_bytes(DataElement(0x00080018, "UI", "1.2.3"), implicit=True)
        == b"\x08\x00\x18\x00\x06\x00\x00\x001.2.3\0"
    )
    assert file_meta_bytes(envelope_for(inputs[0]).instance.header.file_meta) is not None


def test_an_edited_version_is_checksummed_as_it_is_written(tmp_path, inputs, anonymizer):
    from router.spool.checksum import file_checksum
    from router.spool.store import Spool
    from tests.support.peers import wait_for

    spool = Spool(tmp_path / "spool")
    spool.prepare()
    for path in inputs[:3] + inputs[-3:]:
        version = spool.write_version(anonymizer(envelope_for(path)).instance)
        version.file.close()
        assert version.checksum == file_checksum(version.path), path
    spool.spares.refill()
    wait_for(lambda: len(spool.spares.ready_paths) >= 2, 10, message="spares made")
    version = spool.write_version(anonymizer(envelope_for(inputs[0])).instance)  # into a spare: no rename
    version.file.close()
    assert version.checksum == file_checksum(version.path)
    assert version.entry_durable and version.path.parent.parent == spool.objects
    spool.close()
