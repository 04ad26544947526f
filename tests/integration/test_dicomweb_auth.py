"""Who may use a dicomweb endpoint: basic credentials against salted hashes, bearer tokens, and
TLS; 401 with a challenge otherwise, logged with the peer; files made by the command line."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request

import pytest

from router.endpoints.dicomweb.auth import read_entries, verify_password
from tests.conftest import router_section
from tests.support.cli import run_cli
from tests.support.dicomweb import (
    closed_by_peer,
    dicomweb_endpoint_toml,
    multipart_related,
    post,
    raw_connection,
    stow_content_type,
)
from tests.support.logs import events
from tests.support.peers import free_port, wait_for
from tests.support.tls import CertificateAuthority


def start(tmp_path, write_config, start_router, endpoint_extra: str) -> int:
    port = free_port()
    text = (
        router_section(tmp_path / "data")
        + dicomweb_endpoint_toml("web", port, endpoint_extra)
        + f"""
[backends.archive]
type = "filesystem"
path = "{tmp_path / "archive"}"

[pipelines.web]
endpoints = ["web"]
backends = ["archive"]
"""
    )
    start_router(write_config(text))
    return port


def https_stow(port: int, ca: CertificateAuthority, files) -> tuple[ssl.SSLContext, urllib.request.Request]:
    """A client TLS context trusting ``ca`` (add a certificate to it for client authentication)
    and a STOW-RS request of ``files`` to the endpoint on ``port``."""
    context = ssl.create_default_context(cafile=str(ca.bundle))
    context.check_hostname = False
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/dicom-web/studies",
        method="POST",
        data=multipart_related(files),
        headers={"Content-Type": stow_content_type()},
    )
    return context, request


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_credentials_are_checked_against_salted_hashes(tmp_path, write_config, start_router, small_files, caplog):
    users = tmp_path / "users"
    made = run_cli("passwd", users, "alice", input_text="correct horse\n")
    assert made.returncode == 0, made.stderr
    stored = read_entries(users)["alice"]
    assert stored.startswith("scrypt$") and "correct horse" not in users.read_text()
    assert oct(users.stat().st_mode & 0o777) == "0o600" and verify_password(stored, "correct horse")
    port = start(tmp_path, write_config, start_router, f'auth = {{ type = "basic", users_file = "{users}" }}')
    body = multipart_related(small_files[:1])
    status, headers, _ = post(port, "/dicom-web/studies", body, stow_content_type())
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    status, _, _ = post(port, "/dicom-web/studies", body, stow_content_type(), basic("alice", "wrong"))
    assert status == 401
    status, _, _ = post(port, "/dicom-web/studies", body, stow_content_type(), basic("alice", "correct horse"))
    assert status == 200
    refused = events(caplog, "request not authenticated")
    assert len(refused) == 2 and all(e["peer"].startswith("127.0.0.1:") for e in refused)
    received = events(caplog, "instance received")
    assert received and received[-1]["user"] == "alice"
    run_cli("passwd", users, "bob", input_text="another\n")  # read again when the file changes
    status, _, _ = post(port, "/dicom-web/studies", body, stow_content_type(), basic("bob", "another"))
    assert status == 200


def test_bearer_tokens_are_stored_as_hashes_only(tmp_path, write_config, start_router, small_files):
    tokens = tmp_path / "tokens"
    made = run_cli("token", tokens, "uploader")
    assert made.returncode == 0
    token = made.stdout.strip()
    assert len(token) >= 40 and token not in tokens.read_text()
    port = start(tmp_path, write_config, start_router, f'auth = {{ type = "bearer", tokens_file = "{tokens}" }}')
    body = multipart_related(small_files[:1])
    status, headers, _ = post(
        port, "/dicom-web/studies", body, stow_content_type(), {"Authorization": "Bearer not-the-token"}
    )
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = post(port, "/dicom-web/studies", body, stow_content_type(), {"Authorization": f"Bearer {token}"})
    assert status == 200


def test_a_missing_users_file_is_an_environment_finding(tmp_path, write_config):
    config = write_config(
        router_section(tmp_path / "data")
        + dicomweb_endpoint_toml(
            "web", free_port(), f'auth = {{ type = "basic", users_file = "{tmp_path / "nobody"}" }}'
        )
        + """
[backends.archive]
type = "filesystem"
path = "archive"

[pipelines.web]
endpoints = ["web"]
backends = ["archive"]
"""
    )
    assert run_cli("check", "-c", config, "--tier", "references").returncode == 0
    checked = run_cli("check", "-c", config)
    assert checked.returncode == 78 and "endpoints.web.auth: cannot read" in checked.stderr


def test_stow_over_tls_with_a_client_certificate(tmp_path, write_config, start_router, small_files):
    ca = CertificateAuthority(tmp_path / "pki", "Test CA")
    server = ca.issue("localhost", server=True)
    client = ca.issue("uploader", server=False)
    port = start(
        tmp_path,
        write_config,
        start_router,
        f'tls = {{ certificate = "{server.certificate}", private_key = "{server.private_key}", '
        f'ca_bundle = "{ca.bundle}", require_client_certificate = true }}',
    )
    context, request = https_stow(port, ca, small_files[:1])
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionResetError)):
        urllib.request.urlopen(request, context=context, timeout=10)  # no client certificate
    context.load_cert_chain(str(client.certificate), str(client.private_key))
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        assert answer.status == 200


def test_sockets_that_never_finish_a_tls_handshake_fill_only_their_address_share_of_the_pending_pool(
    tmp_path, write_config, start_router, small_files, caplog
):
    """The handshake runs inside the pending pool: silent sockets from one address take only
    that address's places, the next one is refused at once, other clients still get in, and
    the silent ones are closed at the handshake timeout with a log line naming each."""
    ca = CertificateAuthority(tmp_path / "pki", "Test CA")
    server = ca.issue("localhost", server=True)
    port = start(
        tmp_path,
        write_config,
        start_router,
        "max_pending = 8\nmax_pending_per_address = 4\n"
        f'tls = {{ certificate = "{server.certificate}", private_key = "{server.private_key}", '
        "handshake_timeout = 3 }",
    )
    silent = [raw_connection(port, source="127.0.0.2") for _ in range(4)]
    try:
        over = raw_connection(port, source="127.0.0.2")
        assert closed_by_peer(over, timeout=10)
        over.close()
        (refused,) = wait_for(lambda: events(caplog, "connection refused"), 10, message="the refusal logged")
        assert refused["peer"].startswith("127.0.0.2:") and "from this address" in refused["reason"]
        context, request = https_stow(port, ca, small_files[:1])
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            assert answer.status == 200
        assert all(closed_by_peer(sock, timeout=30) for sock in silent)
        failed = wait_for(
            lambda: (lambda found: found if len(found) == 4 else None)(events(caplog, "TLS handshake failed")),
            10,
            message="each silent socket's handshake failure logged",
        )
        assert all(line["peer"].startswith("127.0.0.2:") for line in failed)
    finally:
        for sock in silent:
            sock.close()
