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
    write_file_meta_info(stock, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=instance,
                                                 transfer_syntax=ts, **kwargs))
    ours = FileMetaValues(sop_class, instance, ts, **kwargs)
    assert encode_file_meta(ours) == stock.getvalue()
