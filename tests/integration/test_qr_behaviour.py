"""Query/retrieve behaviour with scripted pynetdicom upstreams: worklist, cancel, failures, what is offered."""

from __future__ import annotations

import threading
import time

import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from router import engine
from router.engine.application_entity import RouterAE
from tests.conftest import dimse_backend_toml, endpoint_section, router_section
from tests.support.dicomgen import write_series
from tests.support.peers import StorageSCP, free_port, wait_for
from tests.support.qrclients import findscu
from tests.support.qrpeer import ScriptedPACS

ROUTER_AE = "DICOM_ROUTER"


def worklist_item(accession: str, modality: str, patient: str) -> Dataset:
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = f"{modality}01"
    step.ScheduledProcedureStepStartDate = "20261122"
    step.ScheduledProcedureStepID = f"SPS-{accession}"
    item = Dataset()
    item.AccessionNumber = accession
    item.PatientID = patient
    item.PatientName = f"PATIENT^{patient}"
    item.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1338.99.{accession[3:]}"
    item.ScheduledProcedureStepSequence = Sequence([step])
    return item


class ScriptedUpstream:
    """A pynetdicom C-FIND SCP whose answers and pace the test chooses; records what it saw."""

    def __init__(self, model, answers: list[Dataset], delay: float = 0.0, ae_title: str = "UPSTREAM"):
        self.model = model
        self.answers = answers
        self.delay = delay
        self.ae_title = ae_title
        self.port = free_port()
        self.queries: list[Dataset] = []
        self.cancelled = threading.Event()
        self.server = None

    def __enter__(self):
        engine.configure()
        ae = RouterAE(self.ae_title)
        ae.add_supported_context(self.model)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_FIND, self._on_find)]
        )
        return self

    def __exit__(self, *exc):
        self.server.shutdown()

    def _on_find(self, event):
        self.queries.append(event.identifier)
        modality = None
        if "ScheduledProcedureStepSequence" in event.identifier:
            modality = event.identifier.ScheduledProcedureStepSequence[0].get("Modality") or None
        for answer in self.answers:
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            if modality and answer.ScheduledProcedureStepSequence[0].Modality != modality:
                continue
            time.sleep(self.delay)
            yield 0xFF00, answer
        yield 0x0000, None


def config(
    tmp_path, port, backends: str, upstreams: list[str], pipeline_extra: str = "", endpoint_extra: str = ""
) -> str:
    head = (
        router_section(tmp_path / "data", f'ae_title = "{ROUTER_AE}"')
        + endpoint_section("qr", port, endpoint_extra)
        + endpoint_section("store_only", free_port())
    )
    return (
        head
        + f"""
{backends}

[backends.archive]
type = "filesystem"
path = "{tmp_path / "archive"}"

[pipelines.qr]
endpoints = ["qr"]
backends = {upstreams!r}
{pipeline_extra}

[pipelines.store]
endpoints = ["store_only"]
backends = ["archive"]
""".replace("'", '"')
    )


def upstream_table(name: str, port: int, ae_title: str, flag: str = "query") -> str:
    return dimse_backend_toml(port, ae_title, name) + f"{flag} = true\n"


def client_find(port: int, model, query: Dataset, cancel_after: int | None = None):
    ae = AE("QRCLIENT")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=ROUTER_AE)
    assert assoc.is_established
    answers, statuses = [], []
    try:
        for status, identifier in assoc.send_c_find(query, model, msg_id=7):
            statuses.append(int(status.Status) if "Status" in status else None)
            if identifier is not None and statuses[-1] in (0xFF00, 0xFF01):
                answers.append(identifier)
                if cancel_after is not None and len(answers) == cancel_after:
                    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == model)
                    assoc.send_c_cancel(7, context.context_id)
    finally:
        assoc.release()
    return answers, statuses


@pytest.mark.dcmtk
def test_worklist_through_the_router_with_response_middleware(tmp_path, write_config, start_router):
    items = [
        worklist_item("ACC1001", "CT", "P1"),
        worklist_item("ACC1002", "MR", "P2"),
        worklist_item("ACC1003", "CT", "P3"),
    ]
    with ScriptedUpstream(ModalityWorklistInformationFind, items, ae_title="RIS") as ris:
        port = free_port()
        response = """
[[pipelines.qr.response_middleware]]
type = "coerce"
operations = [{ set = "InstitutionName", value = "via {called_aet}" }]
"""
        start_router(
            write_config(config(tmp_path, port, upstream_table("ris", ris.port, "RIS", "worklist"), ["ris"], response))
        )
        keys = [
            "ScheduledProcedureStepSequence[0].Modality=CT",
            "AccessionNumber",
            "PatientID",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
            "InstitutionName",
        ]
        direct, expected = findscu(ris.port, "RIS", keys, tmp_path / "direct", "worklist")
        routed, answers = findscu(port, ROUTER_AE, keys, tmp_path / "routed", "worklist")
    assert routed.returncode == 0, routed.stderr
    assert (
        sorted(a.AccessionNumber for a in answers)
        == sorted(e.AccessionNumber for e in expected)
        == ["ACC1001", "ACC1003"]
    )
    assert {a.InstitutionName for a in answers} == {f"via {ROUTER_AE}"}
    assert ris.queries[-1].ScheduledProcedureStepSequence[0].Modality == "CT"


def test_cancel_reaches_the_upstream(tmp_path, write_config, start_router):
    answers = [worklist_item(f"ACC{i:04d}", "CT", f"P{i}") for i in range(40)]
    for a in answers:
        a.QueryRetrieveLevel = "STUDY"
    with ScriptedUpstream(StudyRootQueryRetrieveInformationModelFind, answers, delay=0.05) as pacs:
        port = free_port()
        start_router(write_config(config(tmp_path, port, upstream_table("pacs", pacs.port, "UPSTREAM"), ["pacs"])))
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        got, statuses = client_find(port, StudyRootQueryRetrieveInformationModelFind, query, cancel_after=2)
        wait_for(pacs.cancelled.is_set, 10, message="the upstream to see the C-CANCEL")
    assert statuses[-1] == 0xFE00
    assert 2 <= len(got) < 40


def test_unreachable_upstream_gives_unable_to_process(tmp_path, write_config, start_router):
    port = free_port()
    start_router(write_config(config(tmp_path, port, upstream_table("pacs", free_port(), "NOBODY"), ["pacs"])))
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    got, statuses = client_find(port, StudyRootQueryRetrieveInformationModelFind, query)
    assert got == [] and statuses[-1] == 0xC001


def test_one_upstream_down_the_other_answers(tmp_path, write_config, start_router):
    answer = worklist_item("ACC0001", "CT", "P1")
    answer.QueryRetrieveLevel = "STUDY"
    with ScriptedUpstream(StudyRootQueryRetrieveInformationModelFind, [answer]) as pacs:
        port = free_port()
        backends = upstream_table("pacs", pacs.port, "UPSTREAM") + upstream_table("down", free_port(), "NOBODY")
        start_router(write_config(config(tmp_path, port, backends, ["pacs", "down"])))
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        got, statuses = client_find(port, StudyRootQueryRetrieveInformationModelFind, query)
    assert [g.StudyInstanceUID for g in got] == [answer.StudyInstanceUID]
    assert statuses[-1] == 0x0000


def test_filter_refuses_a_query_and_coerce_rewrites_it(tmp_path, write_config, start_router):
    answer = worklist_item("ACC0001", "CT", "P1")
    answer.QueryRetrieveLevel = "STUDY"
    with ScriptedUpstream(StudyRootQueryRetrieveInformationModelFind, [answer]) as pacs:
        port = free_port()
        stages = """
[[pipelines.qr.middleware]]
type = "filter"
match = { calling_aet = "QRCLIENT" }
action = "reject"
reject_status = 0xA700

[[pipelines.qr.middleware]]
type = "coerce"
operations = [{ set = "AccessionNumber", value = "ACC*" }]
"""
        start_router(
            write_config(config(tmp_path, port, upstream_table("pacs", pacs.port, "UPSTREAM"), ["pacs"], stages))
        )
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        got, statuses = client_find(port, StudyRootQueryRetrieveInformationModelFind, query)
        assert statuses[-1] == 0x0000 and len(got) == 1
        assert pacs.queries[-1].AccessionNumber == "ACC*"  # the query was rewritten on its way
        other = AE("INTRUDER")
        other.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = other.associate("127.0.0.1", port, ae_title=ROUTER_AE)
        refused = [int(s.Status) for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
        assoc.release()
    assert refused == [0xA700]


def test_query_retrieve_is_offered_only_where_a_pipeline_can_answer(tmp_path, write_config, start_router):
    port = free_port()
    service = start_router(write_config(config(tmp_path, port, upstream_table("pacs", free_port(), "PACS"), ["pacs"])))
    store_port = service.endpoints["store_only"].address[1]
    for target, offered in ((port, True), (store_port, False)):
        ae = AE("QRCLIENT")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", target, ae_title=ROUTER_AE)
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts} if assoc.is_established else set()
        if assoc.is_established:
            assoc.release()
        # the pacs backend answers queries only (no retrieve): C-FIND offered, C-MOVE not
        assert (StudyRootQueryRetrieveInformationModelFind in accepted) is offered
        assert StudyRootQueryRetrieveInformationModelMove not in accepted


def move_config(
    tmp_path, port: int, upstream_port: int, upstream_ae: str, viewer_port: int, pipeline_extra: str = ""
) -> str:
    """The Q/R endpoint with a C-GET-retrieving upstream and VIEWER as a known move destination."""
    backends = upstream_table("pacs", upstream_port, upstream_ae).replace("query = true", 'retrieve = "get"')
    return config(
        tmp_path,
        port,
        backends,
        ["pacs"],
        pipeline_extra,
        endpoint_extra=f'move_destinations = {{ VIEWER = "127.0.0.1:{viewer_port}" }}',
    )


def send_move(port: int, study_uid: str, cancel_after: int | None = None) -> list[int]:
    """C-MOVE a study to VIEWER; the statuses received (a C-CANCEL after ``cancel_after`` pending ones)."""
    model = StudyRootQueryRetrieveInformationModelMove
    ae = AE("QRCLIENT")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=ROUTER_AE)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    statuses = []
    for status, _ in assoc.send_c_move(query, "VIEWER", model, msg_id=9):
        statuses.append(int(status.Status))
        if cancel_after is not None and statuses.count(0xFF00) == cancel_after:
            context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == model)
            assoc.send_c_cancel(9, context.context_id)
    assert assoc.is_established  # the association survives whatever the C-MOVE ended with
    assoc.release()
    return statuses


def test_move_cancel_reaches_the_upstream_retrieval(tmp_path, write_config, start_router):
    files = write_series(tmp_path / "study", 20, "small", patient="CANCEL")
    with ScriptedPACS(files, delay=0.1) as pacs, StorageSCP(tmp_path / "viewer", ae_title="VIEWER") as viewer:
        port = free_port()
        start_router(write_config(move_config(tmp_path, port, pacs.port, pacs.ae_title, viewer.port)))
        statuses = send_move(port, str(dcmread(files[0]).StudyInstanceUID), cancel_after=2)
        wait_for(pacs.cancelled.is_set, 10, message="the upstream C-GET to be cancelled")
    assert statuses[-1] == 0xFE00
    assert 2 <= len(viewer.received) < 20
    assert pacs.sent < 20


def test_a_query_only_backend_receives_no_stores(tmp_path, write_config, start_router, small_files):
    with StorageSCP(tmp_path / "ris", ae_title="RIS") as ris:
        port = free_port()
        backends = upstream_table("ris", ris.port, "RIS", "worklist") + "store = false\n"
        service = start_router(write_config(config(tmp_path, port, backends, ["ris", "archive"])))
        sender = AE("MODALITY")
        sender.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
        assoc = sender.associate("127.0.0.1", port, ae_title=ROUTER_AE)
        assert [int(assoc.send_c_store(p).Status) for p in small_files[:3]] == [0, 0, 0]
        assoc.release()
        wait_for(lambda: service.queue.counts().get("archive", {}).get("delivered") == 3, 30, message="archive")
    assert "ris" not in service.queue.counts()
    assert ris.received == []


def test_move_with_the_upstream_down_fails_cleanly(tmp_path, write_config, start_router):
    with StorageSCP(tmp_path / "viewer", ae_title="VIEWER") as viewer:
        port = free_port()
        start_router(write_config(move_config(tmp_path, port, free_port(), "NOBODY", viewer.port)))
        statuses = send_move(port, "1.2.3.4")
    assert len(statuses) == 1 and 0xC000 <= statuses[0] <= 0xCFFF
    assert viewer.received == []


def test_a_refused_move_retrieves_nothing(tmp_path, write_config, start_router):
    files = write_series(tmp_path / "study", 3, "small", patient="REFUSED")
    with ScriptedPACS(files) as pacs, StorageSCP(tmp_path / "viewer", ae_title="VIEWER") as viewer:
        port = free_port()
        refuse = (
            '[[pipelines.qr.middleware]]\ntype = "filter"\nmatch = { calling_aet = "TRUSTED" }\naction = "reject"\n'
        )
        start_router(write_config(move_config(tmp_path, port, pacs.port, pacs.ae_title, viewer.port, refuse)))
        statuses = send_move(port, str(dcmread(files[0]).StudyInstanceUID))
    assert len(statuses) == 1 and 0xC000 <= statuses[0] <= 0xCFFF
    assert viewer.received == [] and pacs.sent == 0
