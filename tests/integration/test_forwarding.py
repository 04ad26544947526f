"""Instances travel sender -> router -> destination with their data sets byte-identical."""

from __future__ import annotations

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from router import engine
from tests.conftest import dimse_backend_toml, router_toml
from tests.support.dicomfiles import digests_by_uid
from tests.support.peers import (
    StorageSCP,
    free_port,
    start_storescp,
    stop_process,
    storescu,
    wait_for,
)
from tests.support.spool import spooled_files


def send_with_pynetdicom(port: int, paths, calling="MODALITY", called="DICOM_ROUTER") -> list[int]:
    engine.configure()
    ae = AE(calling)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def test_pynetdicom_to_pynetdicom_identical(tmp_path, write_config, start_router, port, ct_files, small_files):
    with StorageSCP(tmp_path / "dest") as scp:
        backends = dimse_backend_toml(scp.port, "STORE_SCP")
        start_router(write_config(router_toml(tmp_path / "data", port, backends, ["pacs"])))
        files = ct_files + small_files[:30]
        statuses = send_with_pynetdicom(port, files)
        assert statuses == [0] * len(files)
        wait_for(lambda: len(scp.received) >= len(files), 60, message="all instances at the destination")
        arrived = digests_by_uid((tmp_path / "dest").glob("*.dcm"))
        assert arrived == digests_by_uid(files)
        assert set(scp.calling_aets) == {"DICOM_ROUTER"}


@pytest.mark.dcmtk
def test_dcmtk_storescu_to_storescp_120_instances(tmp_path, write_config, start_router, port, small_files, ct_files):
    dest_port = free_port()
    storescp = start_storescp(tmp_path / "dest", dest_port)
    try:
        backends = dimse_backend_toml(dest_port, "STORESCP")
        service = start_router(write_config(router_toml(tmp_path / "data", port, backends, ["pacs"])))
        files = small_files + ct_files
        result = storescu(port, files)
        assert result.returncode == 0, result.stderr
        wait_for(
            lambda: len(list((tmp_path / "dest").glob("*"))) >= len(files), 120, message="all instances at storescp"
        )
        wait_for(
            lambda: service.queue.counts().get("pacs", {}).get("delivered") == len(files),
            30,
            message="the queue to record every delivery",
        )
        arrived = digests_by_uid((tmp_path / "dest").glob("*"))
        assert arrived == digests_by_uid(files)
        # every spool file is removed once delivered
        wait_for(lambda: not spooled_files(tmp_path / "data"), 10, message="an empty spool")
    finally:
        stop_process(storescp)
