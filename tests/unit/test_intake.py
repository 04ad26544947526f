"""The intake's order of work: the received file is made durable while the pipelines route it,
and it is closed or removed only once that is over."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from router.config.loader import load_config
from router.engine.spare_files import SpareFiles
from router.envelope import AssociationInfo, Command, RequestEnvelope
from router.intake import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, Intake
from router.pipeline import PipelineSet
from router.spool.edited_copies import write_edited_copy
from router.spool.queue import DeliveryQueue
from router.spool.store import Spool
from tests.conftest import dimse_backend_toml, router_toml
from tests.support.dicomgen import make_dataset


class RecordingFile(io.FileIO):
    """The received file as the endpoint hands it over; its close is recorded."""

    def __init__(self, path, events: list):
        super().__init__(path, "r+")
        self.events = events

    def close(self):
        if not self.closed:
            self.events.append("closed")
        super().close()


@pytest.fixture
def intake(tmp_path):
    config_path = tmp_path / "router.toml"
    config_path.write_text(router_toml(tmp_path / "data", 11112, dimse_backend_toml(11113), ["pacs"]))
    config = load_config(config_path)
    spool = Spool(tmp_path / "data")
    for directory in (spool.data_dir, spool.incoming, spool.objects / "00"):
        directory.mkdir(parents=True, exist_ok=True)
    queue = DeliveryQueue(spool.queue_path)
    intake = Intake(spool, queue, PipelineSet(config))
    yield intake
    intake.close()
    queue.close()


def received(intake: Intake, events: list, pixels: bool = False, latin1: bool = False) -> tuple[str, RecordingFile]:
    """A CT instance (without pixel data unless ``pixels``; a Latin-1 patient name if ``latin1``)
    as received into a spare in a spool shard."""
    path = intake.spool.objects / "00" / "spare.dcm"
    ds = make_dataset("ct", "INTAKE", "1.2.3.4", "1.2.3.4.1", 0, rows=256 if pixels else 32)
    if latin1:
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jürgen"
    if pixels:
        ds.PixelData = bytes(range(256)) * (256 * 256 * 2 // 256)
    ds.save_as(path, enforce_file_format=True)
    return str(path), RecordingFile(path, events)


def envelope() -> RequestEnvelope:
    association = AssociationInfo("ingest", "assoc-1", "MODALITY", "DICOM_ROUTER", "127.0.0.1", 4000)
    return RequestEnvelope(association, Command("store", "1.2.840.10008.5.1.4.1.1.2", 1, 0, "1.2.3.4.1.1"))


def record_fsyncs(intake: Intake, monkeypatch, events: list, fail: bool = False) -> threading.Event:
    """Record the start and end of each file fsync; returns an event set when one has started."""
    started = threading.Event()
    stock = intake.spool.make_durable

    def make_durable(path, fd=None, entry_durable=False):
        events.append("fsync started")
        started.set()
        if fail:
            events.append("fsync failed")
            raise OSError(5, "Input/output error")
        stock(path, fd, entry_durable)
        events.append("fsync done")

    monkeypatch.setattr(intake.spool, "make_durable", make_durable)
    return started


def test_the_received_file_is_fsynced_while_the_pipelines_route_it(intake, monkeypatch):
    events: list = []
    started = record_fsyncs(intake, monkeypatch, events)
    stock_route = intake.pipelines.route

    def route(envelope):
        events.append(f"routing, fsync started: {started.wait(10)}")
        return stock_route(envelope)

    monkeypatch.setattr(intake.pipelines, "route", route)
    path, file = received(intake, events)
    result = intake.receive_store(envelope(), path, "1.2.840.10008.1.2.1", None, received_file=file)

    assert result.status == SUCCESS and result.stored
    assert events[0] == "fsync started" and "routing, fsync started: True" in events
    assert events.index("fsync done") < events.index("closed")
    assert [row[1] for row in intake.queue.instance_files()] == [path]


def test_an_instance_the_pipeline_fails_on_is_closed_and_removed_after_its_fsync(intake, monkeypatch, tmp_path):
    events: list = []
    record_fsyncs(intake, monkeypatch, events)

    def route(envelope):
        raise RuntimeError("a stage broke")

    monkeypatch.setattr(intake.pipelines, "route", route)
    path, file = received(intake, events)
    result = intake.receive_store(envelope(), path, "1.2.840.10008.1.2.1", None, received_file=file)

    assert result.status == CANNOT_UNDERSTAND and not result.stored
    assert events.index("fsync done") < events.index("closed")
    assert not (tmp_path / "data" / "objects" / "00" / "spare.dcm").exists()
    assert intake.queue.instance_files() == []


def test_a_received_file_that_cannot_be_made_durable_leaves_no_row_and_no_file(intake, monkeypatch, tmp_path):
    events: list = []
    record_fsyncs(intake, monkeypatch, events, fail=True)
    path, file = received(intake, events)
    result = intake.receive_store(envelope(), path, "1.2.840.10008.1.2.1", None, received_file=file)

    assert result.status == OUT_OF_RESOURCES and "Input/output error" in result.reason
    assert events == ["fsync started", "fsync failed", "closed"]
    assert not (tmp_path / "data" / "objects" / "00" / "spare.dcm").exists()
    assert intake.queue.instance_files() == []


@pytest.fixture
def anonymizing_intake(tmp_path):
    (tmp_path / "research.key").write_text("a-key-for-tests-only-0123456789abcdef\n")
    config_path = tmp_path / "router.toml"
    stage = '\n[[pipelines.default.middleware]]\ntype = "anonymize"\nkey_file = "research.key"\n'
    config_path.write_text(router_toml(tmp_path / "data", 11112, dimse_backend_toml(11113), ["pacs"], extra=stage))
    spool = Spool(tmp_path / "data")
    spool.prepare()
    queue = DeliveryQueue(spool.queue_path)
    intake = Intake(spool, queue, PipelineSet(load_config(config_path)))
    yield intake
    intake.close()
    queue.close()
    spool.close()


@pytest.mark.parametrize("latin1", [False, True], ids=["stream-way", "data-set-way"])
def test_an_edited_version_of_its_header_is_kept_by_reference_to_the_received_file(
    anonymizing_intake, monkeypatch, latin1
):
    """The received file is the only one fsynced; the version's copy, written when it is
    delivered, is the anonymized header followed by the received pixel data (a non-ASCII name
    takes the stage's data set way)."""
    intake = anonymizing_intake
    events: list = []
    record_fsyncs(intake, monkeypatch, events)
    path, file = received(intake, events, pixels=True, latin1=latin1)
    result = intake.receive_store(envelope(), path, "1.2.840.10008.1.2.1", None, received_file=file)

    assert result.status == SUCCESS and result.stored
    assert events == ["fsync started", "fsync done", "closed"]
    ((_, needed, size, _),) = intake.queue.instance_files()
    assert (needed, size) == (path, os.path.getsize(path))
    (delivery,) = intake.queue.claim_due("pacs", 10)
    assert delivery.edited is not None and delivery.edited.source == path and not os.path.exists(delivery.path)
    write_edited_copy(delivery.path, delivery.edited, delivery.size)
    copy, original = dcmread(delivery.path), dcmread(path)
    assert os.path.getsize(delivery.path) == delivery.size
    assert copy.PatientID != original.PatientID and copy.SOPInstanceUID == delivery.sop_instance_uid
    assert copy.PixelData == original.PixelData
    assert intake.queue.mark_delivered(delivery) == [delivery.path, path]


def test_a_received_file_its_edited_version_replaces_goes_back_among_the_spares_emptied(
    anonymizing_intake, monkeypatch
):
    """An edited version written out whole (an instance without pixel data, or with little)."""
    intake = anonymizing_intake
    intake.spool.spares.close()
    intake.spool.spares = SpareFiles(_no_files, intake.spool.incoming)  # none made: the one given back is seen
    events: list = []
    record_fsyncs(intake, monkeypatch, events)
    path, file = received(intake, events)
    result = intake.receive_store(envelope(), path, "1.2.840.10008.1.2.1", None, received_file=file)

    assert result.status == SUCCESS and result.stored
    ((_, version, _, _),) = intake.queue.instance_files()
    assert version != path and os.path.getsize(version) > 0
    assert events == ["fsync started", "fsync done", "closed"]  # the version's fsync only
    assert path in intake.spool.spares.ready_paths and os.path.getsize(path) == 0
    spare = None
    while (taken := intake.spool.spares.take_ready()) is not None and spare is None:
        spare = taken if taken[0] == path else None
    assert spare is not None
    spare[1].write(b"the next instance")
    spare[1].close()
    assert Path(path).read_bytes() == b"the next instance"


def _no_files(count: int) -> list:
    raise OSError(28, "No space left on device")
