"""Stored instances through route, coerce and anonymize in a running router, to real destinations."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE

from router.config import load_config
from router.tools.queue_admin import queue_command
from tests.conftest import dimse_backend_toml, endpoint_section, router_section
from tests.integration.test_forwarding import send_with_pynetdicom
from tests.support.deid import key_file, raw_pixel_bytes
from tests.support.peers import (
    StorageSCP,
    free_port,
    start_storescp,
    stop_process,
    storescu,
    wait_for,
)
from tests.support.richgen import write_rich_study
from tests.support.spool import spooled_files


def config_text(data_dir, port, backends: str, pipelines: str) -> str:
    return (
        router_section(data_dir)
        + endpoint_section("ingest", port)
        + f"""
{backends}

{pipelines}
"""
    )


@pytest.mark.dcmtk
def test_storescu_to_clinical_and_anonymized_research_copies(tmp_path, write_config, start_router, port):
    files = write_rich_study(tmp_path / "in", "P001", series=2, per_series=3)
    key = key_file(tmp_path)
    clinical_port, research_port = free_port(), free_port()
    clinical = start_storescp(tmp_path / "clinical", clinical_port, "PACS")
    research = start_storescp(tmp_path / "research", research_port, "RESEARCH")
    pipelines = f"""
[pipelines.clinical]
endpoints = ["ingest"]
backends = ["pacs"]
[[pipelines.clinical.middleware]]
type = "coerce"
operations = [{{ set = "StationName", value = "{{calling_aet}}" }}, {{ delete = ["private"] }}]

[pipelines.research]
endpoints = ["ingest"]
backends = ["research"]
[[pipelines.research.middleware]]
type = "anonymize"
key_file = "{key}"
options = ["retain_longitudinal_modified_dates"]
mapping_file = "{tmp_path / "reid.csv"}"
"""
    backends = dimse_backend_toml(clinical_port, "PACS", "pacs") + dimse_backend_toml(
        research_port, "RESEARCH", "research"
    )
    try:
        service = start_router(write_config(config_text(tmp_path / "data", port, backends, pipelines)))
        result = storescu(port, files, calling="CT_SCANNER")
        assert result.returncode == 0, result.stderr
        wait_for(
            lambda: (
                len(list((tmp_path / "clinical").iterdir())) == len(files)
                and len(list((tmp_path / "research").iterdir())) == len(files)
            ),
            60,
            message="both copies of every instance",
        )
        wait_for(lambda: not spooled_files(tmp_path / "data"), 20, message="an empty spool")
    finally:
        stop_process(clinical)
        stop_process(research)
    originals = {dcmread(p).SOPInstanceUID: p for p in files}
    for path in (tmp_path / "clinical").iterdir():
        ds = dcmread(path)
        assert ds.StationName == "CT_SCANNER"
        assert not any(e.tag.is_private for e in ds)
        assert raw_pixel_bytes(path) == raw_pixel_bytes(originals[ds.SOPInstanceUID])
    research_sets = [dcmread(p) for p in (tmp_path / "research").iterdir()]
    assert not set(originals) & {ds.SOPInstanceUID for ds in research_sets}
    assert len({ds.SeriesInstanceUID for ds in research_sets}) == 2
    assert len({ds.StudyInstanceUID for ds in research_sets}) == 1
    assert {ds.PatientIdentityRemoved for ds in research_sets} == {"YES"}
    assert {str(ds.PatientName) for ds in research_sets} != {"DOE^JANE"}
    pixels = sorted(raw_pixel_bytes(p) for p in files)
    assert sorted(raw_pixel_bytes(p) for p in (tmp_path / "research").iterdir()) == pixels
    assert "patient_id,P001," in (tmp_path / "reid.csv").read_text()
    counts = service.queue.counts()
    assert counts["pacs"]["delivered"] == counts["research"]["delivered"] == len(files)


def test_route_rules_choose_filesystem_backends(tmp_path, write_config, start_router, port):
    ct = write_rich_study(tmp_path / "ct", "P001", series=1, per_series=2)
    backends = "".join(
        f'\n[backends.{n}]\ntype = "filesystem"\npath = "{tmp_path / n}"\n'
        for n in ("from_scanner", "chest", "archive")
    )
    pipelines = """
[pipelines.default]
endpoints = ["ingest"]
[[pipelines.default.middleware]]
type = "route"
default = ["archive"]
rules = [
  { match = { calling_aet = "CT_*" }, backends = ["from_scanner"] },
  { match = { StudyDescription = { regex = "(?i)chest" }, SeriesNumber = { min = 1, max = 1 } }, backends = ["chest"], stop = true },
  { match = { Modality = "CT" }, backends = ["archive"] },
]
"""
    service = start_router(write_config(config_text(tmp_path / "data", port, backends, pipelines)))
    assert send_with_pynetdicom(port, ct, calling="CT_SCANNER") == [0, 0]
    assert send_with_pynetdicom(port, ct[:1], calling="WORKSTATION") == [0]

    def chest_done() -> bool:  # ct[0] was sent twice: the second copy may supersede the first
        superseded = service.queue.events().get("chest", {}).get("superseded", 0)
        return service.queue.counts().get("chest", {}).get("delivered", 0) + superseded == 3

    wait_for(chest_done, 30, message="deliveries")
    wait_for(lambda: service.queue.counts().get("from_scanner", {}).get("delivered") == 2, 30, message="deliveries")
    assert "archive" not in service.queue.counts() or not service.queue.counts()["archive"].get("delivered")


def test_burned_in_annotation_is_held_until_released(tmp_path, write_config, start_router, port):
    (path,) = write_rich_study(tmp_path / "in", series=1, per_series=1)
    ds = dcmread(path)
    del ds.BurnedInAnnotation
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.save_as(path)
    with StorageSCP(tmp_path / "dest") as scp:
        pipelines = f"""
[pipelines.default]
endpoints = ["ingest"]
backends = ["pacs"]
[[pipelines.default.middleware]]
type = "anonymize"
key_file = "{key_file(tmp_path)}"
burned_in_annotation = "quarantine"
"""
        config_path = write_config(config_text(tmp_path / "data", port, dimse_backend_toml(scp.port), pipelines))
        service = start_router(config_path)
        ae = AE("MODALITY")
        ae.add_requested_context(SecondaryCaptureImageStorage, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER")
        assert int(assoc.send_c_store(path).Status) == 0
        assoc.release()
        wait_for(lambda: service.queue.counts().get("pacs", {}).get("quarantined") == 1, 10, message="held")
        (held,) = service.queue.list_state("quarantined")
        assert "BurnedInAnnotation is absent" in held.reason
        assert scp.received == []
        assert queue_command(load_config(config_path), "retry", backends=["pacs"], ids=None, purge_all=False) == 0
        wait_for(lambda: len(scp.received) == 1, 30, message="the released instance")
    (arrived,) = (tmp_path / "dest").iterdir()
    assert dcmread(arrived).PatientIdentityRemoved == "YES"


def test_unmapped_value_rejects_with_the_configured_status(tmp_path, write_config, start_router, port):
    files = write_rich_study(tmp_path / "in", series=1, per_series=1)
    table = tmp_path / "map.csv"
    table.write_text("from,to\nOther Hospital,H2\n")
    backends = f'\n[backends.archive]\ntype = "filesystem"\npath = "{tmp_path / "archive"}"\n'
    pipelines = f"""
[pipelines.default]
endpoints = ["ingest"]
backends = ["archive"]
[[pipelines.default.middleware]]
type = "coerce"
operations = [{{ map = "InstitutionName", table = "{table}", unmapped = "reject", reject_status = 0xA905 }}]
"""
    start_router(write_config(config_text(tmp_path / "data", port, backends, pipelines)))
    assert send_with_pynetdicom(port, files) == [0xA905]
    assert not spooled_files(tmp_path / "data")
