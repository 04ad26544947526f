"""DICOM TLS: endpoints accept the right certificates and refuse the rest; backends verify their peer."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from router import engine
from router.engine.application_entity import RouterAE
from tests.conftest import dimse_backend_toml, router_toml
from tests.support.peers import dcmtk, dcmtk_env, free_port, wait_for
from tests.support.tls import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(root, "Test CA")
    rogue = CertificateAuthority(root / "rogue", "Rogue CA")
    return {
        "ca": ca,
        "server": ca.issue("router", server=True),
        "client": ca.issue("modality", server=False),
        "rogue_client": rogue.issue("intruder", server=False),
        "peer": ca.issue("pacs", server=True),
        "rogue_ca": rogue,
    }


def tls_endpoint(pki, require=True) -> str:
    server = pki["server"]
    return (
        f'tls = {{ certificate = "{server.certificate}", private_key = "{server.private_key}", '
        f'ca_bundle = "{pki["ca"].bundle}", require_client_certificate = {str(require).lower()} }}'
    )


def client_context(pki, cert: str | None = "client") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki["ca"].bundle)
    if cert:
        issued = pki[cert]
        context.load_cert_chain(issued.certificate, issued.private_key)
    return context


def echo(port: int, tls_context: ssl.SSLContext | None, timeout: float = 20) -> int | None:
    engine.configure()
    ae = AE("MODALITY")
    ae.add_requested_context(Verification)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    kwargs = {"tls_args": (tls_context, "localhost")} if tls_context else {}
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER", **kwargs)
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if "Status" in status else None


@pytest.fixture
def tls_router(tmp_path, write_config, start_router, pki):
    port = free_port()
    text = router_toml(
        tmp_path / "data",
        port,
        f'[backends.archive]\ntype = "filesystem"\npath = "{tmp_path / "a"}"\n',
        ["archive"],
        endpoint_extra=tls_endpoint(pki),
    )
    return port, start_router(write_config(text))


def test_tls_with_a_trusted_client_certificate_is_accepted(tls_router, pki, small_files):
    port, service = tls_router
    assert echo(port, client_context(pki)) == 0x0000
    ae = AE("MODALITY")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ROUTER", tls_args=(client_context(pki), "localhost"))
    assert int(assoc.send_c_store(small_files[0]).Status) == 0
    assoc.release()
    wait_for(lambda: service.queue.counts().get("archive", {}).get("delivered") == 1, 20, message="delivery")


@pytest.mark.parametrize("cert", [None, "rogue_client"])
def test_tls_without_a_trusted_client_certificate_is_refused(tls_router, pki, cert):
    port, _ = tls_router
    assert echo(port, client_context(pki, cert)) is None


def test_plain_tcp_to_a_tls_endpoint_is_refused(tls_router):
    port, _ = tls_router
    assert echo(port, None, timeout=10) is None


def test_a_silent_client_does_not_block_others(tls_router, pki):
    port, _ = tls_router
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        assert echo(port, client_context(pki), timeout=10) == 0x0000  # while the silent one is connected
    finally:
        silent.close()


@pytest.mark.dcmtk
def test_dcmtk_echoscu_over_tls(tls_router, pki):
    port, _ = tls_router
    client = pki["client"]
    ok = subprocess.run(
        [
            dcmtk("echoscu"),
            "-aec",
            "DICOM_ROUTER",
            "+tls",
            str(client.private_key),
            str(client.certificate),
            "+cf",
            str(pki["ca"].bundle),
            "127.0.0.1",
            str(port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    rogue = pki["rogue_client"]
    refused = subprocess.run(
        [
            dcmtk("echoscu"),
            "-aec",
            "DICOM_ROUTER",
            "+tls",
            str(rogue.private_key),
            str(rogue.certificate),
            "+cf",
            str(pki["ca"].bundle),
            "127.0.0.1",
            str(port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0


class TLSStoreSCP:
    """A pynetdicom storage SCP on TLS that requires a client certificate from the test CA."""

    def __init__(self, pki):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki["peer"].certificate, pki["peer"].private_key)
        context.load_verify_locations(pki["ca"].bundle)
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.port = free_port()
        self.received = []

    def __enter__(self):
        engine.configure()
        ae = RouterAE("TLS_PACS")
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def _on_store(self, event):
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.mark.parametrize("trusted", [True, False])
def test_backend_verifies_its_tls_peer(tmp_path, write_config, start_router, pki, small_files, trusted):
    from tests.integration.test_forwarding import send_with_pynetdicom

    with TLSStoreSCP(pki) as pacs:
        port = free_port()
        ca = pki["ca"].bundle if trusted else pki["rogue_ca"].bundle
        client = pki["client"]
        backend = dimse_backend_toml(pacs.port, "TLS_PACS") + (
            f'tls = {{ ca_bundle = "{ca}", certificate = "{client.certificate}", private_key = "{client.private_key}" }}\n'
        )
        service = start_router(write_config(router_toml(tmp_path / "data", port, backend, ["pacs"])))
        assert send_with_pynetdicom(port, small_files[:2]) == [0, 0]
        if trusted:
            wait_for(lambda: len(pacs.received) == 2, 30, message="TLS deliveries")
        else:
            wait_for(
                lambda: service.queue.events().get("pacs", {}).get("failure:unreachable"),
                30,
                message="the untrusted peer to be refused",
            )
            assert pacs.received == []


def served_certificate(port: int, pki) -> bytes:
    context = client_context(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def test_rotated_certificates_are_served_after_a_reload(tls_router, pki):
    port, service = tls_router
    before = served_certificate(port, pki)
    fresh = pki["ca"].issue("router-2027", server=True)
    server = pki["server"]
    server.certificate.write_bytes(fresh.certificate.read_bytes())  # replaced in place, same paths
    server.private_key.write_bytes(fresh.private_key.read_bytes())
    assert service.reload() is True
    after = served_certificate(port, pki)
    assert after != before
    assert echo(port, client_context(pki)) == 0x0000


def test_tls_settings_round_trip_and_missing_files_are_located_environment_findings(tmp_path, write_config, pki):
    """A TLS file that does not exist yet is found by check's environment tier at its key, not by
    the schema: the reference tier passes; ``serve`` refuses the configuration (exit 78)."""
    import tomli_w

    from router.config import load_config
    from router.config.checks import check_stage_files
    from tests.support.cli import run_cli

    port = free_port()
    client = pki["client"]
    backend = f"""
[backends.pacs]
type = "dimse"
host = "127.0.0.1"
port = 2762
ae_title = "PACS"
tls = {{ ca_bundle = "{pki["ca"].bundle}", certificate = "{client.certificate}", private_key = "{client.private_key}" }}
"""
    config = write_config(router_toml(tmp_path / "data", port, backend, ["pacs"], endpoint_extra=tls_endpoint(pki)))
    loaded = load_config(config)
    (tmp_path / "shown.toml").write_text(tomli_w.dumps(loaded.to_dict()))
    assert load_config(tmp_path / "shown.toml").to_dict() == loaded.to_dict()
    assert check_stage_files(loaded) == []
    broken = config.read_text().replace(str(pki["server"].private_key), str(tmp_path / "missing.key"))
    broken = broken.replace(str(pki["ca"].bundle), str(tmp_path / "missing-ca.pem"))
    broken_file = write_config(broken, "broken.toml")
    problems = {(i.location, i.severity): i.message for i in check_stage_files(load_config(broken_file))}
    assert set(problems) == {("endpoints.ingest.tls", "error"), ("backends.pacs.tls", "error")}
    assert all("cannot load the TLS files" in m for m in problems.values())
    assert run_cli("check", "-c", broken_file, "--tier", "references").returncode == 0
    environment = run_cli("check", "-c", broken_file)
    assert (
        environment.returncode == 78
        and "broken.toml: endpoints.ingest.tls: cannot load the TLS files" in environment.stderr
        and "backends.pacs.tls" in environment.stderr
    )
    served = run_cli("serve", "-c", broken_file, timeout=60)
    assert served.returncode == 78 and "endpoints.ingest.tls" in served.stderr
