"""The command line, run as a subprocess the way an operator runs it."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from router.config import load_config
from router.spool.queue import DeliveryQueue, InstanceRecord
from tests.conftest import ROOT
from tests.support.cli import ServeProcess, run_cli
from tests.support.peers import StorageSCP, free_port, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = sorted((ROOT / "examples").glob("*/router.toml"))


def _copy_example(folder: Path, site: Path) -> None:
    """The example as a fresh clone has it: its tracked files only (a key an operator made in
    place with `keygen` is not part of it)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "."], cwd=folder, capture_output=True)
    except FileNotFoundError:  # no git: a source tree from an archive, nothing untracked in it
        listed = None
    names = [n for n in listed.stdout.decode().split("\0") if n] if listed and listed.returncode == 0 else []
    if not names:
        shutil.copytree(folder, site, ignore=shutil.ignore_patterns("*.key"))
        return
    for name in names:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, site / name)


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.parent.name)
def test_examples_pass_the_reference_tier_as_cloned(config, tmp_path):
    """Before any `keygen`: schema and references hold (a key file is an environment finding)."""
    site = tmp_path / config.parent.name
    _copy_example(config.parent, site)
    result = run_cli("check", "-c", site / "router.toml", "--tier", "references")
    assert result.returncode == 0, result.stderr


@pytest.mark.xdist_group("port-11112")
@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.parent.name)
def test_examples_pass_check(config, tmp_path):
    """Each example as an operator gets it: copied, its keys and tokens made as its README says."""
    site = tmp_path / config.parent.name
    _copy_example(config.parent, site)
    for key in re.findall(r'^key_file = "([^"]+)"', config.read_text(), re.MULTILINE):
        made = run_cli("keygen", site / key)
        assert made.returncode == 0, made.stderr
    for tokens in re.findall(r'tokens_file = "([^"]+)"', config.read_text()):
        made = run_cli("token", site / tokens, "someone")
        assert made.returncode == 0, made.stderr
    result = run_cli("check", "-c", site / "router.toml")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_there_are_the_promised_examples():
    assert {p.parent.name for p in EXAMPLES} >= {
        "forward",
        "fan-out",
        "filter-by-modality",
        "anonymize-to-research",
        "route-by-rules",
        "query-proxy",
    }


def test_check_reports_every_error_and_exits_78(tmp_path):
    fixtures = ROOT / "tests" / "fixtures" / "config"
    result = run_cli("check", "-c", "bad-values.toml", cwd=fixtures)
    assert result.returncode == 78
    lines = result.stderr.splitlines()
    assert "bad-values.toml: router.ae_title: an AE title has 1 to 16 characters" in lines
    assert "bad-values.toml: backends.pacs.port: required key is missing" in lines
    assert lines[-1] == "8 error(s)"


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(tmp_path):
    first = run_cli("init", tmp_path / "site")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "site" / "router.toml").exists()
    assert {p.name for p in (tmp_path / "site" / "pipelines").glob("*.toml")} >= {
        "archive.toml",
        "forward.toml",
        "fan-out.toml",
        "filter-by-modality.toml",
        "route-by-rules.toml",
        "anonymize-to-research.toml",
    }
    check = run_cli("check", "-c", tmp_path / "site" / "router.toml", "--tier", "references")
    assert check.returncode == 0, check.stderr
    admin = load_config(tmp_path / "site" / "router.toml").admin
    assert admin is not None and admin.listen.startswith("127.0.0.1:")  # `status` works out of the box
    again = run_cli("init", tmp_path / "site")
    assert again.returncode == 1 and "exists; nothing written" in again.stderr


def test_config_show_round_trips(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.toml").write_text(
        '[pipelines.ct]\nendpoints = ["ingest"]\nbackends = ["arch"]\n'
        '[[pipelines.ct.middleware]]\ntype = "filter"\nmatch = { Modality = ["CT"], calling_aet = "CT*" }\n'
    )
    (tmp_path / "router.toml").write_text(
        '[router]\ninclude = ["pipelines/*.toml"]\n[endpoints.ingest]\ntype = "dimse"\nport = 4242\n'
        '[backends.arch]\ntype = "filesystem"\npath = "arch"\n[backends.arch.retry]\nmax_attempts = 3\n'
    )
    shown = run_cli("config", "show", "-c", tmp_path / "router.toml")
    assert shown.returncode == 0, shown.stderr
    doc = tomllib.loads(shown.stdout)
    assert doc["pipelines"]["ct"]["middleware"][0]["match"] == {"Modality": ["CT"], "calling_aet": "CT*"}
    assert doc["backends"]["arch"]["retry"]["max_attempts"] == 3
    assert doc["endpoints"]["ingest"]["max_associations"] == 16  # defaults filled
    (tmp_path / "shown.toml").write_text(shown.stdout)
    original = load_config(tmp_path / "router.toml")
    reparsed = load_config(tmp_path / "shown.toml")
    assert reparsed.to_dict() == original.to_dict()
    assert reparsed.pipelines == original.pipelines and reparsed.backends == original.backends


def test_echo_configured_backend_and_address(tmp_path):
    with StorageSCP(tmp_path / "d", ae_title="ECHO_SCP") as scp:
        (tmp_path / "r.toml").write_text(
            f'[backends.pacs]\ntype = "dimse"\nhost = "127.0.0.1"\nport = {scp.port}\nae_title = "ECHO_SCP"\n'
        )
        ok = run_cli("echo", "pacs", "-c", tmp_path / "r.toml")
        assert ok.returncode == 0 and "status 0x0000" in ok.stdout
        ok2 = run_cli("echo", f"127.0.0.1:{scp.port}:ECHO_SCP")
        assert ok2.returncode == 0
    dead = run_cli("echo", f"127.0.0.1:{free_port()}:NOBODY")
    assert dead.returncode == 1 and "no association" in dead.stderr
    bad = run_cli("echo", "nonsense")
    assert bad.returncode == 78 and "neither a configured backend" in bad.stderr


def test_send_folder_with_summary_and_failure_exit(tmp_path, small_files):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(small_files[:5]):
        (folder / "sub" / f"{i}.dcm").write_bytes(f.read_bytes())
    with StorageSCP(tmp_path / "d") as scp:
        ok = run_cli("send", folder, "--to", f"127.0.0.1:{scp.port}:STORE_SCP")
        assert ok.returncode == 0, ok.stderr
        assert "5 sent, 0 with warnings, 0 failed" in ok.stdout
        assert len(scp.received) == 5
        (folder / "manifest.json").write_text("{}")
        (folder / ".DS_Store").write_bytes(b"\0" * 200)
        (folder / ".git").mkdir()
        (folder / ".git" / "index.dcm").write_bytes(small_files[0].read_bytes())
        skipping = run_cli("send", folder, "--to", f"127.0.0.1:{scp.port}:STORE_SCP")
        assert skipping.returncode == 0, skipping.stderr
        assert "5 sent, 0 with warnings, 0 failed" in skipping.stdout
        assert "1 skipped (not DICOM files)" in skipping.stdout  # manifest.json; hidden ones unseen
        broken = folder / "sub" / "9.dcm"
        broken.write_bytes(small_files[0].read_bytes()[:200])
        bad = run_cli("send", folder, "--to", f"127.0.0.1:{scp.port}:STORE_SCP")
        assert bad.returncode == 1
        assert "9.dcm: no Part-10 file meta" in bad.stderr
        assert "5 sent, 0 with warnings, 1 failed" in bad.stdout
        nothing = run_cli("send", folder / "manifest.json", "--to", f"127.0.0.1:{scp.port}:STORE_SCP")
        assert nothing.returncode == 1 and "no DICOM file to send" in nothing.stderr


@pytest.mark.dcmtk
def test_send_transfer_syntax_transcodes_scratch_copies_and_leaves_the_files_alone(tmp_path):
    import numpy as np
    from pydicom import dcmread

    from tests.support.images import dcmtk_convert, write_image
    from tests.support.peers import start_storescp, stop_process

    folder = tmp_path / "in"
    folder.mkdir()
    pixels = write_image(folder / "a.dcm", rows=40, columns=36, bits_stored=12, frames=2)
    before = (folder / "a.dcm").read_bytes()
    port = free_port()
    scp = start_storescp(tmp_path / "dest", port, extra=["+xt"])
    try:
        sent = run_cli("send", folder, "--to", f"127.0.0.1:{port}:STORESCP", "--transfer-syntax", "JPEGLSLossless")
        assert sent.returncode == 0, sent.stderr
        assert "1 sent, 0 with warnings, 0 failed" in sent.stdout
        (arrived,) = wait_for(lambda: list((tmp_path / "dest").iterdir()), 10, message="the instance")
        assert dcmread(arrived, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        dcmtk_convert("dcmdjpls", arrived, tmp_path / "decoded.dcm")
        np.testing.assert_array_equal(dcmread(tmp_path / "decoded.dcm").pixel_array, pixels)
    finally:
        stop_process(scp)
    assert (folder / "a.dcm").read_bytes() == before and [p.name for p in folder.iterdir()] == ["a.dcm"]
    bad = run_cli("send", folder, "--to", f"127.0.0.1:{port}:STORESCP", "--transfer-syntax", "J2K")
    assert bad.returncode == 2 and "cannot write 'J2K'" in bad.stderr


def test_queue_list_retry_purge(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "r.toml").write_text(
        f'[router]\ndata_dir = "{data}"\n[backends.pacs]\ntype = "dimse"\nhost = "127.0.0.1"\nport = 1\nae_title = "P"\n'
    )
    spool_file = data / "x.dcm"
    spool_file.write_bytes(b"x")
    q = DeliveryQueue(data / "queue.db")
    q.enqueue(
        InstanceRecord(str(spool_file), "1.2.3.4", "1.2", "1.2.840.10008.1.2.1", 1, time.time(), calling_aet="CT1"),
        [("p", "pacs")],
    )
    (d,) = q.claim_due("pacs", 1)
    q.quarantine(d, 0xC000, "C-STORE status 0xC000 (permanent failure)")
    listed = run_cli("queue", "list", "-c", tmp_path / "r.toml")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith("pacs"))
    assert row.split()[:5] == ["pacs", "0", "0", "0", "1"]
    assert f"#{d.id} pacs 1.2.3.4 from CT1: C-STORE status 0xC000 (permanent failure)" in listed.stdout
    retried = run_cli("queue", "retry", "-c", tmp_path / "r.toml")
    assert "requeued 1" in retried.stdout
    assert q.counts()["pacs"]["pending"] == 1
    (d,) = q.claim_due("pacs", 1)
    q.schedule_retry(d, time.time() + 60, None, "cannot connect to P@127.0.0.1:1: connection refused")
    waiting = run_cli("queue", "list", "-c", tmp_path / "r.toml")
    assert 'pacs: 1 after "cannot connect to P@127.0.0.1:1: connection refused"' in waiting.stdout
    (d,) = q.claim_due("pacs", 1, now=time.time() + 120)
    q.quarantine(d, None, "again")
    refused = run_cli("queue", "purge", "-c", tmp_path / "r.toml")
    assert refused.returncode == 2
    purged = run_cli("queue", "purge", "--backend", "pacs", "-c", tmp_path / "r.toml")
    assert "purged 1" in purged.stdout and "removed 1 spool file" in purged.stdout
    assert not spool_file.exists()


@pytest.mark.xdist_group("port-11112")
def test_serve_on_the_embedded_default(tmp_path, small_files):
    """No -c: port 11112, AE DICOM_ROUTER, everything filed under ./dicom-router-data/archive."""
    serve = ServeProcess(None, tmp_path / "serve.log", cwd=tmp_path).start(11112)
    try:
        sent = run_cli("send", *small_files[:3], "--to", "127.0.0.1:11112:DICOM_ROUTER")
        assert sent.returncode == 0, sent.stderr
        archive = tmp_path / "dicom-router-data" / "archive"
        files = wait_for(
            lambda: (
                [p for p in archive.rglob("*.dcm")]
                if archive.exists() and len(list(archive.rglob("*.dcm"))) == 3
                else None
            ),
            30,
            message="3 archived files",
        )
        assert {p.parent.parent.parent.name for p in files} == {"SM1"}  # PatientID/Study/Series/file
        status = run_cli("status", cwd=tmp_path)  # the default enables the admin API on loopback
        assert status.returncode == 0, status.stderr
        assert "ingest" in status.stdout and "archive" in status.stdout
        with urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        assert serve.stop() == 0
    log = serve.log_text()
    assert '"event": "router started"' in log and '"event": "router stopped"' in log


def test_second_router_on_the_same_data_dir_is_refused(tmp_path):
    port, other = free_port(), free_port()
    text = (
        f'[router]\ndata_dir = "{tmp_path / "data"}"\nmin_free_space_mb = 0\n'
        f'[endpoints.ingest]\ntype = "dimse"\nport = {{port}}\n'
        f'[backends.a]\ntype = "filesystem"\npath = "a"\n[pipelines.p]\nendpoints = ["ingest"]\nbackends = ["a"]\n'
    )
    (tmp_path / "one.toml").write_text(text.format(port=port))
    (tmp_path / "two.toml").write_text(text.format(port=other))
    first = ServeProcess(tmp_path / "one.toml", tmp_path / "one.log").start(port)
    try:
        second = run_cli("serve", "-c", tmp_path / "two.toml", timeout=60)
        assert second.returncode == 1
        assert "another router is using" in second.stderr
    finally:
        assert first.stop() == 0


def test_check_passes_while_the_router_runs_and_still_finds_a_port_another_program_holds(tmp_path):
    """Edit -> check -> reload: the running router's own ports are not errors; a port held by
    any other program still is."""
    port = free_port()
    text = (
        f'[router]\ndata_dir = "{tmp_path / "data"}"\nmin_free_space_mb = 0\n'
        f'[endpoints.ingest]\ntype = "dimse"\nbind = "127.0.0.1"\nport = {port}\n{{extra}}'
        f'[backends.a]\ntype = "filesystem"\npath = "a"\n[pipelines.p]\nendpoints = [{{endpoints}}]\nbackends = ["a"]\n'
    )
    config = tmp_path / "router.toml"
    config.write_text(text.format(extra="", endpoints='"ingest"'))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    try:
        check = run_cli("check", "-c", config)
        assert check.returncode == 0, check.stdout + check.stderr
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            taken = other.getsockname()[1]
            config.write_text(
                text.format(
                    extra=f'[endpoints.more]\ntype = "dimse"\nbind = "127.0.0.1"\nport = {taken}\n',
                    endpoints='"ingest", "more"',
                )
            )
            check = run_cli("check", "-c", config)
        assert check.returncode == 78
        assert f"cannot listen on 127.0.0.1:{taken}" in check.stderr and f":{port}:" not in check.stderr
    finally:
        assert serve.stop() == 0
    stopped = run_cli("check", "-c", config)  # the router gone, its port is free again
    assert f":{port}" not in stopped.stderr


# -- route-test, explain-profile, keygen ------------------------------------------


@pytest.fixture
def research_site(tmp_path):
    from tests.support.richgen import write_rich_study

    (instance,) = write_rich_study(tmp_path / "in", "P001", series=1, per_series=1)
    assert run_cli("keygen", tmp_path / "research.key").returncode == 0
    config = tmp_path / "router.toml"
    config.write_text(f"""
[router]
data_dir = "{tmp_path / "data"}"
[endpoints.ingest]
type = "dimse"
port = 4242
[endpoints.other]
type = "dimse"
port = 4243
[backends.pacs]
type = "filesystem"
path = "pacs"
[backends.research]
type = "filesystem"
path = "research"
[backends.ct_ai]
type = "filesystem"
path = "ct_ai"
[pipelines.clinical]
endpoints = ["ingest"]
[[pipelines.clinical.middleware]]
type = "route"
rules = [{{ match = {{ calling_aet = "CT_*" }}, backends = ["ct_ai", "pacs"] }}]
default = ["pacs"]
[[pipelines.clinical.middleware]]
type = "coerce"
operations = [{{ set = "StationName", value = "{{calling_aet}}" }}]
[pipelines.research]
endpoints = ["ingest"]
backends = ["research"]
[[pipelines.research.middleware]]
type = "anonymize"
key_file = "research.key"
options = ["retain_uids", "clean_descriptors"]
mapping_file = "reid.csv"
""")
    return config, instance


def test_route_test_prints_stages_backends_and_diff_without_side_effects(research_site, tmp_path):
    config, instance = research_site
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("route-test", "-c", config, instance, "--calling-aet", "CT_01")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "clinical.middleware[0](route): route (rules [0] -> ['ct_ai', 'pacs'])" in out
    assert "clinical.middleware[1](coerce): coerce (operations[0]: set StationName)" in out
    assert "research.middleware[0](anonymize): anonymize (" in out
    assert "-> ct_ai: edited by pipeline clinical" in out and "-> research: edited by pipeline research" in out
    assert "~ StationName(0008,1010): 'CTSCAN01' -> 'CT_01'" in out
    assert "~ PatientName(0010,0010): 'DOE^JANE' -> 'ANON" in out
    assert "SOPInstanceUID(0008,0018)" not in out.split("changes made by pipeline research")[1]  # retain_uids
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no data dir, no mapping file

    other = run_cli("route-test", "-c", config, instance, "--calling-aet", "WS01", "--endpoint", "other")
    assert other.returncode == 0 and "no pipeline is bound to endpoint 'other'" in other.stdout
    default = run_cli("route-test", "-c", config, instance, "--calling-aet", "WS01")
    assert "no rule matched; default -> ['pacs']" in default.stdout
    bad = run_cli("route-test", "-c", config, config)
    assert bad.returncode == 1 and "not a readable DICOM Part-10 file" in bad.stderr
    unknown = run_cli("route-test", "-c", config, instance, "--endpoint", "nope")
    assert unknown.returncode == 1 and "no endpoint named 'nope'" in unknown.stderr


def test_explain_profile_shows_every_attribute_and_its_reason(research_site):
    config, _ = research_site
    result = run_cli("explain-profile", "-c", config, "research")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "options: retain_uids, clean_descriptors" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("(") or line.startswith("private")}
    assert len(rows) == 621
    assert rows["(0008,0018)"][1:4] == ["K", "U", "retain_uids"]
    assert rows["(0008,1030)"][1:4] == ["C", "X", "clean_descriptors"]  # StudyDescription
    assert rows["(0010,0010)"][1:5] == ["Z", "Z", "basic", "profile"]
    assert rows["(60xx,3000)"][1] == "X"
    none = run_cli("explain-profile", "-c", config, "clinical")
    assert none.returncode == 1 and "has no anonymize stage" in none.stderr


def test_check_locates_middleware_errors(tmp_path):
    (tmp_path / "short.key").write_text("short")
    (tmp_path / "router.toml").write_text("""
[endpoints.ingest]
type = "dimse"
port = 4242
[backends.pacs]
type = "filesystem"
path = "pacs"
[pipelines.p]
endpoints = ["ingest"]
[[pipelines.p.middleware]]
type = "route"
rules = [{ match = { Modality = { regex = "(" } }, backends = ["pacs"] }, { match = { Modality = "CT" }, backends = ["nowhere"] }]
[[pipelines.p.middleware]]
type = "coerce"
operations = [{ set = "StationNam", value = "x" }]
[[pipelines.p.middleware]]
type = "anonymize"
key_file = "short.key"
options = ["retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"]
""")
    result = run_cli("check", "-c", tmp_path / "router.toml")
    assert result.returncode == 78
    err = result.stderr
    assert "router.toml: pipelines.p.middleware[0].rules[0].match: Modality: invalid regex" in err
    assert "router.toml: pipelines.p.middleware[1].operations[0]: 'StationNam' is not a DICOM keyword" in err
    assert "router.toml: pipelines.p.middleware[2].options: retain_longitudinal_full_dates and" in err
    text = (
        (tmp_path / "router.toml")
        .read_text()
        .replace('regex = "("', 'regex = "C."')
        .replace("StationNam", "StationName")
    )
    (tmp_path / "router.toml").write_text(text.replace(', "retain_longitudinal_modified_dates"', ""))
    schema = run_cli("check", "-c", tmp_path / "router.toml", "--tier", "schema")
    assert schema.returncode == 0, schema.stderr  # a key file is made after the configuration: not a schema error
    references = run_cli("check", "-c", tmp_path / "router.toml", "--tier", "references")
    assert (
        references.returncode == 78
        and "middleware[0].rules[1].backends[0]: no backend named 'nowhere'" in references.stderr
    )
    (tmp_path / "router.toml").write_text(
        text.replace(', "retain_longitudinal_modified_dates"', "").replace('"nowhere"', '"pacs"')
    )
    environment = run_cli("check", "-c", tmp_path / "router.toml")
    assert environment.returncode == 78
    assert "router.toml: pipelines.p.middleware[2].key_file: key file" in environment.stderr


def test_keygen_never_overwrites(tmp_path):
    first = run_cli("keygen", tmp_path / "k.key")
    assert first.returncode == 0
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    text = (tmp_path / "k.key").read_text()
    again = run_cli("keygen", tmp_path / "k.key")
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert (tmp_path / "k.key").read_text() == text


def test_check_warns_about_a_readable_key_and_an_unwritable_mapping_dir(research_site, tmp_path):
    config, _ = research_site
    (tmp_path / "research.key").chmod(0o644)
    text = config.read_text().replace('mapping_file = "reid.csv"', 'mapping_file = "research.key/reid.csv"')
    text = text.replace('[endpoints.other]\ntype = "dimse"\nport = 4243\n', "")
    config.write_text(text)
    result = run_cli("check", "-c", config, "--tier", "environment")
    assert "pipelines.research.middleware[0].key_file:" in result.stderr and "chmod 600" in result.stderr
    assert "pipelines.research.middleware[0].mapping_file:" in result.stderr
    assert result.returncode == 78
    (tmp_path / "research.key").chmod(0o640)  # group-readable, as the systemd guide installs it: no warning
    grouped = run_cli("check", "-c", config, "--tier", "environment")
    assert "key_file:" not in grouped.stderr


def test_config_show_round_trips_the_new_stages(research_site, tmp_path):
    config, _ = research_site
    shown = run_cli("config", "show", "-c", config)
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "shown.toml").write_text(shown.stdout)
    assert load_config(tmp_path / "shown.toml").to_dict() == load_config(config).to_dict()


def test_control_characters_from_peers_are_escaped_in_cli_output(tmp_path):
    """A UID and a reason holding terminal control sequences (clear screen, then a fake
    all-clear): ``queue list`` prints them escaped."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "r.toml").write_text(
        f'[router]\ndata_dir = "{data}"\n[backends.pacs]\ntype = "dimse"\nhost = "127.0.0.1"\nport = 1\nae_title = "P"\n'
    )
    hostile_uid = "1.2.3\x1b[2J\x1b[H\rALL QUEUES OK"
    q = DeliveryQueue(data / "queue.db")
    q.enqueue(
        InstanceRecord(
            str(data / "x.dcm"),
            hostile_uid,
            "1.2",
            "1.2.840.10008.1.2.1",
            1,
            time.time(),
            calling_aet="CT\x1b]0;owned\x07",
        ),
        [("p", "pacs")],
    )
    (d,) = q.claim_due("pacs", 1)
    q.quarantine(d, 0xC000, "peer said \x1b[31mRED\x9b")
    listed = run_cli("queue", "list", "-c", tmp_path / "r.toml")
    assert listed.returncode == 0
    assert not any(ch in listed.stdout for ch in "\x1b\x07\r\x9b")
    assert "1.2.3\\x1b[2J\\x1b[H\\x0dALL QUEUES OK" in listed.stdout
    assert "CT\\x1b]0;owned\\x07" in listed.stdout and "\\x1b[31mRED\\x9b" in listed.stdout


def test_serve_refuses_to_start_without_a_key_file_it_names(tmp_path):
    """A missing key file passes the schema tier, but `serve` names it and does not start (78)."""
    port = free_port()
    (tmp_path / "router.toml").write_text(
        f'[router]\ndata_dir = "{tmp_path / "data"}"\nmin_free_space_mb = 0\n'
        f'[endpoints.ingest]\ntype = "dimse"\nport = {port}\n[backends.a]\ntype = "filesystem"\npath = "a"\n'
        '[pipelines.p]\nendpoints = ["ingest"]\nbackends = ["a"]\n'
        '[[pipelines.p.middleware]]\ntype = "anonymize"\nkey_file = "research.key"\n'
    )
    result = run_cli("serve", "-c", tmp_path / "router.toml", timeout=60)
    assert result.returncode == 78
    assert "pipelines.p.middleware[0].key_file" in result.stderr and "dicom-router keygen" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_starter_takes_the_research_pipeline_as_its_comments_say(tmp_path):
    """`init`, then include pipelines/anonymize-to-research.toml and run `keygen research.key`
    where router.toml is, as the comments say: `check` passes (the key is where the pipeline
    reads it, and the backend it names exists)."""
    site = tmp_path / "site"
    assert run_cli("init", site).returncode == 0
    config = site / "router.toml"
    config.write_text(
        config.read_text().replace(
            'include = ["pipelines/archive.toml"]',
            'include = ["pipelines/archive.toml", "pipelines/anonymize-to-research.toml"]',
        )
    )
    before = run_cli("check", "-c", config, "--tier", "references")
    assert before.returncode == 0, before.stderr
    assert run_cli("keygen", "research.key", cwd=site).returncode == 0
    checked = run_cli("check", "-c", config)
    assert checked.returncode == 0, checked.stderr


def test_explain_profile_needs_no_key_file_and_lists_each_row_once(tmp_path):
    """It prints only the action table, so the key file (made later with keygen) is not needed."""
    (tmp_path / "router.toml").write_text(
        '[endpoints.ingest]\ntype = "dimse"\nport = 4242\n[backends.a]\ntype = "filesystem"\npath = "a"\n'
        '[pipelines.research]\nendpoints = ["ingest"]\nbackends = ["a"]\n'
        '[[pipelines.research.middleware]]\ntype = "anonymize"\nkey_file = "research.key"\n'
    )
    explained = run_cli("explain-profile", "-c", tmp_path / "router.toml", "research")
    assert explained.returncode == 0, explained.stderr
    rows = [line.split()[0] for line in explained.stdout.splitlines() if line.startswith(("(", "private"))]
    assert rows.count("private") == 1 and len(rows) == len(set(rows))
