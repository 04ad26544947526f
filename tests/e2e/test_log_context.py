"""pynetdicom's own log lines name the association they are about, like the router's."""

from __future__ import annotations

import json
import socket

from tests.conftest import router_toml
from tests.support import pdus
from tests.support.cli import ServeProcess
from tests.support.peers import free_port, wait_for

BACKENDS = '\n[backends.archive]\ntype = "filesystem"\npath = "archive"\n'


def test_the_idle_timeout_line_names_the_association_and_its_peer(tmp_path, write_config):
    port = free_port()
    config = write_config(router_toml(tmp_path / "data", port, BACKENDS, ["archive"], endpoint_extra="network_timeout = 1"))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(pdus.associate_rq())
        assert pdus.read_pdu(sock, 10)[0] == pdus.A_ASSOCIATE_AC
        local = "%s:%d" % sock.getsockname()[:2]
        assert pdus.connection_closed(sock, 30)  # the router ends the idle association
        sock.close()
        wait_for(lambda: "Network timeout reached" in serve.log_text(), 10, message="the idle timeout's line")
    finally:
        assert serve.stop() == 0
    lines = [json.loads(line) for line in serve.log_text().splitlines() if line.startswith("{")]
    (accepted,) = [line for line in lines if line["event"] == "association accepted"]
    (timeout,) = [line for line in lines if line["event"] == "Network timeout reached"]
    assert timeout["logger"].startswith("pynetdicom")
    assert accepted["peer"] == local
    assert (timeout["assoc_id"], timeout["peer"], timeout["endpoint"]) == \
        (accepted["assoc_id"], local, accepted["endpoint"])
