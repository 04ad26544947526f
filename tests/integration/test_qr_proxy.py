"""Query/retrieve through the router to Orthanc (and dcmqrscp): the same answers as asking the PACS directly."""

from __future__ import annotations

import pytest
from pydicom import Dataset, dcmread

from tests.conftest import dimse_backend_toml, endpoint_section, router_section
from tests.support.deid import key_file, raw_pixel_bytes
from tests.support.dicomfiles import digests_by_uid
from tests.support.logs import events
from tests.support.pacs import load, start_dcmqrscp, start_orthanc
from tests.support.peers import free_port, start_restricted_storescp, start_storescp, stop_process
from tests.support.qrclients import answers_by, final_counts, findscu, getscu, movescu
from tests.support.richgen import write_rich_study
from tests.support.spool import partial_files

pytestmark = [pytest.mark.xdist_group("qr-orthanc"), pytest.mark.orthanc, pytest.mark.dcmtk]

ROUTER_AE = "DICOM_ROUTER"


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("qr-studies")
    return {
        "P001": write_rich_study(root / "p1", "P001", series=2, per_series=2, study_date="20240315"),
        "P002": write_rich_study(root / "p2", "P002", series=1, per_series=3, study_date="20240401"),
        "P003": write_rich_study(root / "p3", "P003", series=1, per_series=2, study_date="20240501", implicit=True),
    }


@pytest.fixture(scope="module")
def ports():
    return {"router": free_port(), "viewer": free_port(), "client": free_port()}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, studies, ports):
    upstream = start_orthanc(
        tmp_path_factory.mktemp("orthanc"),
        {
            ROUTER_AE: ("127.0.0.1", ports["router"]),
            "QRCLIENT": ("127.0.0.1", ports["client"]),
            "VIEWER": ("127.0.0.1", ports["viewer"]),
        },
    )
    load(upstream, [p for files in studies.values() for p in files])
    yield upstream
    upstream.stop()


def router_config(
    tmp_path, ports, orthanc, retrieve="get", extra_backends="", pipeline_extra="", upstreams=("pacs",)
) -> str:
    viewer = f'move_destinations = {{ VIEWER = "127.0.0.1:{ports["viewer"]}" }}'
    return (
        router_section(tmp_path / "data", f'ae_title = "{ROUTER_AE}"')
        + endpoint_section("qr", ports["router"], viewer)
        + dimse_backend_toml(orthanc.port, orthanc.ae_title)
        + f"""query = true
retrieve = "{retrieve}"
{extra_backends}

[pipelines.qr]
endpoints = ["qr"]
backends = {list(upstreams)!r}
{pipeline_extra}
""".replace("'", '"')
    )


@pytest.fixture
def viewer(tmp_path, ports):
    process = start_storescp(tmp_path / "viewer", ports["viewer"], "VIEWER")
    yield tmp_path / "viewer"
    stop_process(process)


STUDY_KEYS = [
    "QueryRetrieveLevel=STUDY",
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "AccessionNumber",
    "ModalitiesInStudy",
]


@pytest.mark.parametrize(
    "model,keys",
    [
        ("study", STUDY_KEYS),
        ("study", ["QueryRetrieveLevel=STUDY", "PatientID=P00*", "StudyInstanceUID", "StudyDate=20240301-"]),
        ("patient", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName"]),
        (
            "study",
            ["QueryRetrieveLevel=SERIES", "StudyInstanceUID={study}", "SeriesInstanceUID", "Modality", "SeriesNumber"],
        ),
    ],
)
def test_find_answers_what_the_pacs_answers(tmp_path, write_config, start_router, ports, orthanc, studies, model, keys):
    study = str(dcmread(studies["P001"][0]).StudyInstanceUID)
    keys = [k.format(study=study) for k in keys]
    start_router(write_config(router_config(tmp_path, ports, orthanc)))
    direct, expected = findscu(orthanc.port, orthanc.ae_title, keys, tmp_path / "direct", model)
    routed, answers = findscu(ports["router"], ROUTER_AE, keys, tmp_path / "routed", model)
    assert direct.returncode == 0 and routed.returncode == 0, routed.stderr
    assert expected, direct.stderr
    wanted = [k.split("=")[0] for k in keys if k.split("=")[0] != "QueryRetrieveLevel"]
    assert answers_by(answers, *wanted) == answers_by(expected, *wanted)
    assert len(answers) == len(expected)


def moved_directly(orthanc, viewer, keys) -> dict[str, str]:
    """What the viewer receives when the PACS itself answers the C-MOVE (then the folder is emptied)."""
    direct = movescu(orthanc.port, orthanc.ae_title, "VIEWER", keys)
    assert direct.returncode == 0, direct.stderr
    digests = digests_by_uid(viewer.iterdir())
    for path in viewer.iterdir():
        path.unlink()
    return digests


@pytest.mark.parametrize("retrieve,patient", [("get", "P001"), ("move", "P001"), ("get", "P003"), ("move", "P003")])
def test_move_delivers_the_pacs_instances_unchanged(
    tmp_path, write_config, start_router, ports, orthanc, studies, viewer, retrieve, patient
):
    service = start_router(write_config(router_config(tmp_path, ports, orthanc, retrieve)))
    study = str(dcmread(studies[patient][0]).StudyInstanceUID)
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"]
    expected = moved_directly(orthanc, viewer, keys)
    assert set(expected) == set(digests_by_uid(studies[patient]))
    result = movescu(ports["router"], ROUTER_AE, "VIEWER", keys)
    assert result.returncode == 0, result.stderr
    assert final_counts(result.stderr + result.stdout).get("Completed") == len(studies[patient])
    assert digests_by_uid(viewer.iterdir()) == expected
    assert not partial_files(tmp_path / "data" / "incoming", tmp_path / "data" / "objects")  # nothing left behind
    assert service.queue.counts() == {}  # retrievals never enter the delivery queue


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_get_returns_the_pacs_instances_unchanged(
    tmp_path, write_config, start_router, ports, orthanc, studies, retrieve
):
    start_router(write_config(router_config(tmp_path, ports, orthanc, retrieve)))
    study = str(dcmread(studies["P002"][0]).StudyInstanceUID)
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"]
    direct = getscu(orthanc.port, orthanc.ae_title, keys, tmp_path / "direct")
    assert direct.returncode == 0, direct.stderr
    result = getscu(ports["router"], ROUTER_AE, keys, tmp_path / "got")
    assert result.returncode == 0, result.stderr
    assert final_counts(result.stderr + result.stdout).get("Completed") == 3
    expected = digests_by_uid((tmp_path / "direct").iterdir())
    assert set(expected) == set(digests_by_uid(studies["P002"]))
    assert digests_by_uid((tmp_path / "got").iterdir()) == expected


@pytest.mark.parametrize("wanted", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80"], ids=["implicit", "jpeg-ls"])
def test_get_converts_for_a_requester_that_takes_only_one_other_syntax(
    tmp_path, write_config, start_router, ports, orthanc, studies, wanted
):
    """The PACS holds Explicit VR files; a C-GET requester that accepts only Implicit VR (or
    only JPEG-LS Lossless) gets each instance in it (streamed from file to file, transcoded
    frame by frame), same data set and pixels, and nothing left behind."""
    from pydicom.uid import UID
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    start_router(write_config(router_config(tmp_path, ports, orthanc, "get")))
    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in studies["P002"]}
    assert {str(d.file_meta.TransferSyntaxUID) for d in originals.values()} == {"1.2.840.10008.1.2.1"}
    sop_classes = {str(d.SOPClassUID) for d in originals.values()}
    received: dict[str, tuple[str, object]] = {}

    def on_store(event):
        received[event.dataset.SOPInstanceUID] = (event.context.transfer_syntax, event.dataset)
        return 0x0000

    ae = AE("QRCLIENT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, [UID(wanted)])
    assoc = ae.associate(
        "127.0.0.1",
        ports["router"],
        ae_title=ROUTER_AE,
        ext_neg=[build_role(c, scp_role=True) for c in sop_classes],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = next(iter(originals.values())).StudyInstanceUID
    statuses = [
        int(status.Status)
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        if status is not None
    ]
    assoc.release()
    assert statuses[-1] == 0x0000 and set(received) == set(originals)
    for uid, (syntax, dataset) in received.items():
        assert syntax == wanted and dataset.PatientID == originals[uid].PatientID
        assert (dataset.pixel_array == originals[uid].pixel_array).all()
    assert not list((tmp_path / "data").rglob("*.converted"))


@pytest.fixture
def one_syntax_viewer(tmp_path, ports, studies, request):
    """A move destination (DCMTK storescp) that accepts the studies' SOP classes in one transfer syntax only."""
    sop_classes = sorted({str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in studies["P002"]})
    process = start_restricted_storescp(tmp_path / "viewer", ports["viewer"], sop_classes, [request.param], "VIEWER")
    yield request.param, tmp_path / "viewer"
    stop_process(process)


@pytest.mark.parametrize(
    "one_syntax_viewer", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"], ids=["implicit", "j2k"], indirect=True
)
def test_move_converts_for_a_destination_that_takes_only_one_other_syntax(
    tmp_path, write_config, start_router, ports, orthanc, studies, one_syntax_viewer
):
    """The PACS holds Explicit VR files; a move destination that accepts only Implicit VR (or only
    JPEG 2000 Lossless) gets each instance in it, same data set and pixels, nothing left behind."""
    wanted, viewer = one_syntax_viewer
    start_router(write_config(router_config(tmp_path, ports, orthanc, "get")))
    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in studies["P002"]}
    study = str(next(iter(originals.values())).StudyInstanceUID)
    result = movescu(ports["router"], ROUTER_AE, "VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"])
    assert result.returncode == 0, result.stderr
    assert final_counts(result.stderr + result.stdout).get("Completed") == len(originals)
    received = {ds.SOPInstanceUID: ds for ds in map(dcmread, viewer.iterdir())}
    assert set(received) == set(originals)
    for uid, dataset in received.items():
        assert dataset.file_meta.TransferSyntaxUID == wanted and dataset.PatientID == originals[uid].PatientID
        assert (dataset.pixel_array == originals[uid].pixel_array).all()
    assert not list((tmp_path / "data").rglob("*.converted"))


@pytest.mark.parametrize("one_syntax_viewer", ["1.2.840.10008.1.2.4.50"], ids=["jpeg-baseline"], indirect=True)
def test_move_to_a_destination_that_takes_only_a_lossy_syntax_fails_each_instance_with_the_list(
    tmp_path, write_config, start_router, ports, orthanc, studies, one_syntax_viewer, caplog
):
    """The router never makes a lossy copy for a retrieval: every sub-operation fails, and the
    final response is Failure (0xA702) with every instance in the Failed SOP Instance UID List."""
    _, viewer = one_syntax_viewer
    start_router(write_config(router_config(tmp_path, ports, orthanc, "get")))
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in studies["P002"]}
    study = str(dcmread(studies["P002"][0], stop_before_pixels=True).StudyInstanceUID)
    result = movescu(ports["router"], ROUTER_AE, "VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"])
    output = result.stderr + result.stdout
    assert final_counts(output).get("Failed") == len(uids) and final_counts(output).get("Completed", 0) == 0
    assert "a702" in output.lower() and all(uid in output for uid in uids)
    assert not list(viewer.iterdir())
    refused = events(caplog, "retrieved instance not sent: not writable in a syntax the destination accepted")
    assert {event["sop_instance_uid"] for event in refused} == uids
    assert all("JPEGBaseline8Bit" in event["reason"] for event in refused)


def test_move_to_an_unknown_destination_is_refused(tmp_path, write_config, start_router, ports, orthanc, studies):
    start_router(write_config(router_config(tmp_path, ports, orthanc)))
    result = movescu(ports["router"], ROUTER_AE, "NOBODY", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3"])
    assert (
        "MoveDestinationUnknown" in result.stderr + result.stdout or "a801" in (result.stderr + result.stdout).lower()
    )


def test_move_series_and_image_levels(tmp_path, write_config, start_router, ports, orthanc, studies, viewer):
    start_router(write_config(router_config(tmp_path, ports, orthanc, "move")))
    first = dcmread(studies["P001"][0])
    series = movescu(
        ports["router"],
        ROUTER_AE,
        "VIEWER",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={first.StudyInstanceUID}",
            f"SeriesInstanceUID={first.SeriesInstanceUID}",
        ],
    )
    assert series.returncode == 0, series.stderr
    image = movescu(
        ports["router"],
        ROUTER_AE,
        "VIEWER",
        [
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={first.StudyInstanceUID}",
            f"SeriesInstanceUID={first.SeriesInstanceUID}",
            f"SOPInstanceUID={first.SOPInstanceUID}",
        ],
    )
    assert image.returncode == 0, image.stderr
    arrived = {dcmread(p).SOPInstanceUID for p in viewer.iterdir()}
    assert arrived == {
        str(dcmread(p).SOPInstanceUID)
        for p in studies["P001"]
        if dcmread(p).SeriesInstanceUID == first.SeriesInstanceUID
    }


def test_retrieval_goes_through_the_pipeline_stages(
    tmp_path, write_config, start_router, ports, orthanc, studies, viewer
):
    anonymize = f"""
[[pipelines.qr.middleware]]
type = "anonymize"
key_file = "{key_file(tmp_path)}"
burned_in_annotation = "pass"
"""
    start_router(write_config(router_config(tmp_path, ports, orthanc, "get", pipeline_extra=anonymize)))
    study = str(dcmread(studies["P002"][0]).StudyInstanceUID)
    result = movescu(ports["router"], ROUTER_AE, "VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"])
    assert result.returncode == 0, result.stderr
    arrived = [dcmread(p) for p in viewer.iterdir()]
    assert len(arrived) == 3
    assert {ds.PatientIdentityRemoved for ds in arrived} == {"YES"}
    assert {str(ds.PatientID) for ds in arrived} != {"P002"}
    assert sorted(raw_pixel_bytes(p) for p in viewer.iterdir()) == sorted(raw_pixel_bytes(p) for p in studies["P002"])


def test_instances_a_stage_refuses_are_reported_failed(
    tmp_path, write_config, start_router, ports, orthanc, studies, viewer
):
    first = dcmread(studies["P001"][0])
    refuse_one_series = f"""
[[pipelines.qr.middleware]]
type = "filter"
match = {{ SeriesInstanceUID = {{ not = "{first.SeriesInstanceUID}" }} }}
"""
    start_router(write_config(router_config(tmp_path, ports, orthanc, "get", pipeline_extra=refuse_one_series)))
    result = movescu(
        ports["router"], ROUTER_AE, "VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first.StudyInstanceUID}"]
    )
    output = result.stderr + result.stdout
    counts = final_counts(output)
    assert counts.get("Completed") == 2 and counts.get("Failed") == 2, output
    assert "Warning" in output or "b000" in output.lower()
    assert len(list(viewer.iterdir())) == 2


def test_find_merges_two_pacs_without_duplicates(tmp_path, write_config, start_router, ports, orthanc, studies):
    p3 = write_rich_study(tmp_path / "p3", "P003", series=1, per_series=1, study_date="20240501")
    second = start_dcmqrscp(tmp_path / "dcmqrscp", files=studies["P002"] + p3)
    try:
        extra = dimse_backend_toml(second.port, second.ae_title, "archive") + "query = true\n"
        start_router(
            write_config(router_config(tmp_path, ports, orthanc, extra_backends=extra, upstreams=("pacs", "archive")))
        )
        keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID"]
        routed, answers = findscu(ports["router"], ROUTER_AE, keys, tmp_path / "routed")
        _, from_orthanc = findscu(orthanc.port, orthanc.ae_title, keys, tmp_path / "o")
        _, from_archive = findscu(second.port, second.ae_title, keys, tmp_path / "a")
    finally:
        second.stop()
    assert routed.returncode == 0, routed.stderr
    union = answers_by(from_orthanc, "StudyInstanceUID", "PatientID") | answers_by(
        from_archive, "StudyInstanceUID", "PatientID"
    )
    assert len(from_archive) == 2 and len(from_orthanc) >= 2
    assert answers_by(answers, "StudyInstanceUID", "PatientID") == union
    assert len(answers) == len(union)  # P002's study, held by both, answered once
