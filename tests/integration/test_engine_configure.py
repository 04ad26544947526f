"""What :func:`router.engine.configure` sets in pynetdicom, seen from a real association.

Runs in both engine modes.
"""

from __future__ import annotations

import pynetdicom.association
import pynetdicom.service_class
from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from router import engine
from router.engine.application_entity import RouterAE


def test_c_find_identifiers_are_never_formatted_for_pynetdicom_s_log(monkeypatch):
    """pynetdicom formats every C-FIND request and response identifier for its log before the
    logger's level is looked at (a third of a response's time); the router turns that off."""
    engine.configure()
    formatted = []

    def pretty_dataset(ds, *args, **kwargs):
        formatted.append(ds)
        return []

    monkeypatch.setattr(pynetdicom.association, "pretty_dataset", pretty_dataset)
    monkeypatch.setattr(pynetdicom.service_class, "pretty_dataset", pretty_dataset)

    def on_find(event):
        for number in range(3):
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{number}"
            yield 0xFF00, match

    scp = RouterAE("FIND_SCP")
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        scu = RouterAE("FIND_SCU")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="FIND_SCP")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        answers = [
            str(identifier.StudyInstanceUID)
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            if status.Status == 0xFF00
        ]
        assoc.release()
    finally:
        server.shutdown()
    assert answers == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert formatted == []
