"""The struct-built C-STORE-RSP is byte-identical to pynetdicom's own encoder."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from router.engine.fast_store import encode_store_rsp
from tests.support.primitives import EVEN_UID, LONG_UID, ODD_UID, store_response


def stock_bytes(primitive: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("status", [0x0000, 0x0001, 0xB000, 0xB007, 0xA700, 0xA900, 0xC000, 0x0110, 0x0124, 0xFFFF])
@pytest.mark.parametrize("sop_class", [EVEN_UID, ODD_UID])
@pytest.mark.parametrize("instance", [EVEN_UID, ODD_UID, LONG_UID, None])
@pytest.mark.parametrize("comment", [None, "disk full", "odd comment"])
@pytest.mark.parametrize("message_id", [1, 2, 65535])
def test_byte_identical_to_pynetdicom(status, sop_class, instance, comment, message_id):
    p = store_response(status, instance, sop_class, comment, message_id=message_id)
    assert encode_store_rsp(p) == stock_bytes(p)


def stock_rq_pdvs(primitive: C_STORE, max_pdu: int) -> list[tuple[int, bytes]]:
    from pynetdicom.dimse_messages import C_STORE_RQ

    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return [pdv for pdata in message.encode_msg(1, max_pdu) for pdv in pdata.presentation_data_value_list]


def fast_rq_pdvs(primitive: C_STORE, max_pdu: int) -> list[tuple[int, bytes]]:
    """The PDVs the fast path sends; fragments of a file are read as DT-1 would send them."""
    from router.engine.fast_store import store_rq_pdata
    from router.engine.pdata_sends import FileFragments

    pdatas = []
    for pdata in store_rq_pdata(primitive, 1, max_pdu):
        pdatas.extend(pdata.as_p_data() if isinstance(pdata, FileFragments) else [pdata])
    return [pdv for pdata in pdatas for pdv in pdata.presentation_data_value_list]


@pytest.mark.parametrize("max_pdu", [0, 4096, 16382, 16384, 65536, 131072, 1048576])
@pytest.mark.parametrize("size", [0, 1, 4090, 4091, 16376, 16378, 100_000, 525_000])
@pytest.mark.parametrize("source", ["path", "bytes"])
@pytest.mark.parametrize("uid", [EVEN_UID, ODD_UID])
def test_store_rq_pdata_identical(tmp_path, max_pdu, size, source, uid):
    import io
    import os

    payload = os.urandom(size)
    p = C_STORE()
    p.MessageID = 7
    p.Priority = 2
    p.AffectedSOPClassUID = uid
    p.AffectedSOPInstanceUID = ODD_UID if uid == EVEN_UID else EVEN_UID
    if source == "path":
        f = tmp_path / "x.bin"
        f.write_bytes(b"HEADER" * 25 + payload)
        p._dataset_path = (f, 150)
    else:
        p.DataSet = io.BytesIO(payload)
    assert fast_rq_pdvs(p, max_pdu) == stock_rq_pdvs(p, max_pdu)
