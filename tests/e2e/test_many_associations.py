"""As many associations as the process's descriptor limit allows; past it, a polite refusal."""

from __future__ import annotations

import json
import resource
import socket

import pytest

from tests.conftest import router_toml
from tests.support import pdus
from tests.support.cli import ServeProcess
from tests.support.peers import free_port

BACKENDS = """
[backends.archive]
type = "filesystem"
path = "archive"
"""
ASSOCIATIONS = 1000


def _open_association(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(pdus.associate_rq())
    return sock


def _echo_on(sock: socket.socket) -> int | None:
    sock.sendall(pdus.echo_rq())
    answer = pdus.read_pdu(sock, 60)
    return pdus.echo_status(answer[1]) if answer and answer[0] == pdus.P_DATA_TF else None


def _serve(tmp_path, write_config, endpoint_extra: str, limit: int | None = None) -> tuple[ServeProcess, int]:
    port = free_port()
    config = write_config(router_toml(tmp_path / "data", port, BACKENDS, ["archive"], endpoint_extra=endpoint_extra))
    serve = ServeProcess(config, tmp_path / "serve.log")
    if limit is not None:
        serve.preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return serve.start(port), port


def _log_tail(serve: ServeProcess, lines: int = 30) -> str:
    return "\n".join(serve.log_text().splitlines()[-lines:])


@pytest.mark.slow
@pytest.mark.xdist_group("heavy-sockets")
def test_a_thousand_concurrent_associations_each_answer_c_echo(tmp_path, write_config):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3 * ASSOCIATIONS + 200:
        pytest.skip(f"the descriptor hard limit ({hard}) is too low for {ASSOCIATIONS} associations on both ends")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # the idle timeout outlasts opening them all on a loaded machine
    serve, port = _serve(tmp_path, write_config, f"max_associations = {ASSOCIATIONS}\nnetwork_timeout = 900")
    held: list[socket.socket] = []
    try:
        for _ in range(ASSOCIATIONS):
            sock = _open_association(port)
            held.append(sock)
            answer = pdus.read_pdu(sock, 60)
            assert answer is not None and answer[0] == pdus.A_ASSOCIATE_AC, (
                f"association {len(held)}: {answer}; the router's log ends:\n{_log_tail(serve)}"
            )
        statuses = [_echo_on(sock) for sock in held]  # all 1,000 open at once
        assert statuses == [0] * ASSOCIATIONS, f"the router's log ends:\n{_log_tail(serve)}"
        extra = _open_association(port)
        answer = pdus.read_pdu(extra, 60)
        extra.close()
        assert answer[0] == pdus.A_ASSOCIATE_RJ and tuple(answer[1][1:4]) == (0x02, 0x03, 0x02)
        for sock in held:
            sock.sendall(pdus.release_rq())
        assert all(pdus.read_pdu(sock, 60)[0] == pdus.A_RELEASE_RP for sock in held)
    finally:
        for sock in held:
            sock.close()
        assert serve.stop() == 0
    log = [json.loads(line) for line in serve.log_text().splitlines() if line.startswith("{")]
    refused = [line for line in log if line.get("event") == "association rejected"]
    assert refused and "max_associations" in refused[-1]["reason"]


@pytest.mark.xdist_group("heavy-sockets")
def test_past_the_descriptor_limit_a_connection_gets_a_reject_not_silence(tmp_path, write_config):
    """With room for only a few dozen associations, the next ones are refused with A-ASSOCIATE-RJ
    (local limit exceeded) and a log line that names the limit, and a freed slot serves again."""
    serve, port = _serve(tmp_path, write_config, "max_associations = 1000", limit=120)
    held: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(100):
            sock = _open_association(port)
            answer = pdus.read_pdu(sock, 30)
            if answer is not None and answer[0] == pdus.A_ASSOCIATE_AC:
                held.append(sock)
                continue
            assert answer is not None and answer[0] == pdus.A_ASSOCIATE_RJ, answer
            assert tuple(answer[1][1:4]) == (0x02, 0x03, 0x02)
            refused += 1
            sock.close()
        assert held and refused
        for sock in held[:5]:
            sock.sendall(pdus.release_rq())
            pdus.read_pdu(sock, 30)
            sock.close()
        assert all(_echo_on(sock) == 0 for sock in held[5:])
        assert pdus.echo_over_raw_socket(port) == 0
    finally:
        for sock in held:
            sock.close()
        assert serve.stop() == 0
    text = serve.log_text()
    assert "association refused: " in text and "Traceback" not in text
