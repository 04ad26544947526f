"""Signals that reach the router while it starts: kept for the loop, never fatal."""

import os
import signal
import threading

from router.config import load_config
from router.service import RouterService
from tests.conftest import router_toml
from tests.support.peers import free_port

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def test_a_reload_asked_for_while_the_router_starts_runs_once_it_serves(tmp_path, write_config):
    archive = f'[backends.archive]\ntype = "filesystem"\npath = "{tmp_path / "archive"}"\n'
    service = RouterService(
        load_config(write_config(router_toml(tmp_path / "data", free_port(), archive, ["archive"])))
    )
    reloads = []

    def reload() -> bool:
        reloads.append(True)
        service._stop.set()
        return True

    service.reload = reload
    give_up = threading.Timer(30, service._stop.set)  # bounds the loop if the reload never comes
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    try:
        service.handle_signals()
        os.kill(os.getpid(), signal.SIGHUP)  # as systemd's reload would, before the endpoints listen
        service.start()
        give_up.start()
        service.serve_forever()
    finally:
        give_up.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert reloads == [True]
