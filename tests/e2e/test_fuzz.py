"""The DIMSE fuzzer, bounded for CI: mutated PDUs never crash, leak or silence the router."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import router_toml
from tests.fuzz.dimse_fuzzer import fuzz, resources, settle
from tests.integration.test_forwarding import send_with_pynetdicom
from tests.support.cli import ServeProcess
from tests.support.dicomgen import write_series
from tests.support.peers import free_port, wait_for

CASES = 2500
TIME_BUDGET = 45.0


@pytest.mark.xdist_group("heavy-sockets")
def test_thousands_of_mutated_pdus_leave_the_router_answering_and_whole(tmp_path):
    canaries = write_series(tmp_path / "canaries", CASES // 250 + 1, "small", patient="CANARY")
    port = free_port()
    config = tmp_path / "router.toml"
    config.write_text(router_toml(tmp_path / "data", port, '[backends.archive]\ntype = "filesystem"\npath = "archive"\n',
                                  ["archive"], endpoint_extra="acse_timeout = 2\nnetwork_timeout = 5\nmax_pending = 256"))
    serve = ServeProcess(config, tmp_path / "serve.log").start(port)
    try:
        assert send_with_pynetdicom(port, canaries[-1:], calling="CANARY") == [0]  # spares made, queue open
        time.sleep(0.5)
        baseline = resources(serve.pid)
        report = fuzz(port, CASES, seed=20261203, canaries=canaries, deadline=time.monotonic() + TIME_BUDGET)
        after = settle(serve.pid, baseline, 30)
        assert serve.proc.poll() is None, "the router died"
        assert report.cases >= 500 and report.canaries_sent and report.echo_failures == 0
        wait_for(lambda: len(list((tmp_path / "archive").rglob("*.dcm"))) >= len(report.canaries_sent) + 1, 60,
                 message="every canary delivered")
        assert after[0] <= baseline[0] + 4 and after[1] <= baseline[1] + 4, (baseline, after)
    finally:
        assert serve.stop() == 0
    print(f"{report.cases} cases in {report.seconds:.1f} s; threads/descriptors {baseline} -> {after}")
    lines = [line for line in serve.log_text().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), [line for line in lines if not line.startswith("{")][:5]
    events = [json.loads(line) for line in lines]
    assert not [e for e in events if e.get("event") == "a thread ended with an unhandled error"]
    assert not [e for e in events if "Traceback" in e.get("exception", "")], \
        [e for e in events if "Traceback" in e.get("exception", "")][:3]
