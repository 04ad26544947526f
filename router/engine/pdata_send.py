"""P-DATA-TF PDUs encoded in one piece on the way out (owned code, version-guarded).

pynetdicom 3.0.4's DT-1 action builds a ``P_DATA_TF`` PDU object with one item object per
PDV, encodes each item, joins them, and hands the bytes to ``AssociationSocket.send``,
which copies the remainder again on every partial send: two to three copies of each
128 KiB fragment of an outgoing data set. :func:`_send_p_data` writes the same bytes
(a test holds them identical to pynetdicom's encoder) with one join, and sends them as a
``memoryview`` so partial sends copy nothing. While anything is bound to EVT_PDU_SENT or
EVT_DATA_SENT (which get the PDU object and its bytes) pynetdicom's own DT-1 runs.
"""

from __future__ import annotations

import struct

from pynetdicom import evt, fsm
from pynetdicom.pdu import P_DATA_TF

P_DATA_TF_TYPE = 0x04
_stock_dt1 = fsm.ACTIONS["DT-1"]
_NEED_OBJECTS = (evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)


def encode_p_data(primitive) -> bytes:
    """A P-DATA primitive as the P-DATA-TF PDU pynetdicom would send."""
    parts = [b""]
    length = 0
    for context_id, value in primitive.presentation_data_value_list:
        parts.append(struct.pack(">LB", len(value) + 1, context_id))
        parts.append(value)
        length += 5 + len(value)
    parts[0] = struct.pack(">BBL", P_DATA_TF_TYPE, 0x00, length)
    return b"".join(parts)


def _send_p_data(dul) -> str:
    """DT-1: send the P-DATA the local user queued (Sta6 + Evt9 -> Sta6)."""
    primitive = dul.to_provider_queue.get(False)
    if dul.socket is None or any(dul.assoc.get_handlers(event) for event in _NEED_OBJECTS):
        dul._send(P_DATA_TF(primitive))
    else:
        dul.socket.send(memoryview(encode_p_data(primitive)))
    return "Sta6"


def install_fast_p_data_send() -> None:
    description, _, next_state = _stock_dt1
    fsm.ACTIONS["DT-1"] = (description, _send_p_data, next_state)
