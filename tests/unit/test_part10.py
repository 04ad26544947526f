"""The struct-built file meta of received files is byte-identical to pydicom's writer."""

from __future__ import annotations

import io

import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dsutils import create_file_meta

from router.engine.part10 import FileMetaValues, encode_file_meta

UIDS = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.20", "1.2.826.0.1.3680043.8.498." + "7" * 38, "1.2"]
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"]


@pytest.mark.parametrize("sop_class", UIDS[:2])
@pytest.mark.parametrize("instance", UIDS)
@pytest.mark.parametrize("ts", SYNTAXES)
@pytest.mark.parametrize("version", [None, "ODD_VERSION", "EVEN_VERSION"])
def test_file_meta_identical(sop_class, instance, ts, version):
    kwargs = {} if version is None else {"implementation_version": version}
    stock = io.BytesIO()
    write_file_meta_info(
        stock, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=instance, transfer_syntax=ts, **kwargs)
    )
    ours = FileMetaValues(sop_class, instance, ts, **kwargs)
    assert encode_file_meta(ours) == stock.getvalue()


def part10_file(path, sop_class, instance, ts, private_information: bytes | None = None):
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.3.4"
    if private_information is not None:
        meta.PrivateInformationCreatorUID = "1.2.3.4.5"
        meta.PrivateInformation = private_information
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.PatientName = "Part^Ten"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("instance", UIDS)
@pytest.mark.parametrize("ts", SYNTAXES[:2])
@pytest.mark.parametrize("private_information", [None, b"ab", b"x" * 6000])
def test_split_part10_reads_what_pydicom_reads(tmp_path, instance, ts, private_information):
    from pynetdicom.dsutils import split_dataset

    from router.engine.part10 import split_part10

    path = part10_file(tmp_path / "f.dcm", UIDS[0], instance, ts, private_information)
    stock_meta, stock_offset = split_dataset(path)
    meta, offset = split_part10(path)
    assert offset == stock_offset
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
        assert keyword in meta
        assert getattr(meta, keyword) == getattr(stock_meta, keyword)
    assert "PatientName" not in meta


def test_split_part10_leaves_files_without_preamble_to_pydicom(tmp_path):
    from pydicom.errors import InvalidDicomError
    from pynetdicom.dsutils import split_dataset

    from router.engine.part10 import split_part10

    path = tmp_path / "raw.dcm"
    path.write_bytes(b"\x08\x00\x18\x00\x02\x00\x00\x001\x00")
    with pytest.raises(InvalidDicomError):
        split_dataset(path)
    with pytest.raises(InvalidDicomError):
        split_part10(path)
