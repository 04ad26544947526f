"""The DIMSE fuzzer, bounded for CI: mutated PDUs never crash, leak or silence the router."""

from __future__ import annotations

import time

import pytest

from tests.fuzz.dimse_fuzzer import fuzz_a_router

CASES = 2500
TIME_BUDGET = 45.0


@pytest.mark.xdist_group("heavy-sockets")
@pytest.mark.slow
def test_thousands_of_mutated_pdus_leave_the_router_answering_and_whole(tmp_path):
    """Alive, answering C-ECHO between cases, every canary delivered, threads and descriptors
    back to their baseline, no traceback or unhandled thread error, stderr all JSON."""
    run = fuzz_a_router(tmp_path, CASES, seed=20261203, deadline=time.monotonic() + TIME_BUDGET)
    print(f"{run.report.cases} cases in {run.report.seconds:.1f} s; threads/descriptors {run.baseline} -> {run.after}")
    assert run.report.cases >= 500 and run.report.canaries_sent
    assert run.problems == []


@pytest.mark.xdist_group("heavy-sockets")
@pytest.mark.slow
def test_thousands_of_mutated_http_requests_leave_the_dicomweb_endpoint_answering_and_whole(tmp_path):
    """No 500 (an error no handler expected), alive, STOW-RS canaries stored and delivered, C-ECHO
    answered beside it, threads and descriptors back, no traceback, stderr all JSON."""
    from tests.fuzz.http_fuzzer import fuzz_a_router as fuzz_http

    run = fuzz_http(tmp_path, 3000, seed=20261204, deadline=time.monotonic() + TIME_BUDGET)
    print(f"{run.report.cases} cases in {run.report.seconds:.1f} s; threads/descriptors {run.baseline} -> {run.after}")
    assert run.report.cases >= 500 and run.report.canaries_sent
    assert run.problems == []
