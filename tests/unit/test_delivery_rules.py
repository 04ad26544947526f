"""Status classification and the retry policy."""

from __future__ import annotations

import random

import pytest

from router.backends.status import Outcome, classify_store_status
from router.spool.retry import RetryPolicy


@pytest.mark.parametrize(
    "status,outcome",
    [
        (0x0000, Outcome.SUCCESS),
        (0xB000, Outcome.WARNING),
        (0xB007, Outcome.WARNING),
        (0x0001, Outcome.WARNING),
        (None, Outcome.TRANSIENT),
        (0xA700, Outcome.TRANSIENT),
        (0xA7FF, Outcome.TRANSIENT),
        (0x0110, Outcome.TRANSIENT),
        (0x0213, Outcome.TRANSIENT),
        (0xA900, Outcome.PERMANENT),
        (0xA9FF, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
        (0xCFFF, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT),
        (0x0124, Outcome.PERMANENT),
        (0x0211, Outcome.PERMANENT),
    ],
)
def test_classify_store_status(status, outcome):
    assert classify_store_status(status) is outcome


POLICY = RetryPolicy(initial_delay=2.0, max_delay=60.0, multiplier=2.0, jitter=0.0, max_attempts=5, max_age=3600.0)


@pytest.mark.parametrize("attempt,delay", [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (100, 60.0)])
def test_backoff_is_exponential_and_capped(attempt, delay):
    assert POLICY.delay(attempt) == delay


def test_jitter_spreads_within_bounds():
    policy = RetryPolicy(10.0, 100.0, 2.0, 0.25, 5, 3600.0)
    rng = random.Random(7)
    delays = [policy.delay(1, rng) for _ in range(500)]
    assert min(delays) >= 7.5 and max(delays) <= 12.5
    assert len({round(d, 3) for d in delays}) > 100


def test_give_up_by_attempts_and_by_age():
    assert POLICY.give_up_reason(4, 1000.0, 1010.0) is None
    assert POLICY.give_up_reason(5, 1000.0, 1010.0) == "gave up after 5 attempts"
    assert "in the queue" in POLICY.give_up_reason(1, 1000.0, 1000.0 + 3600.0)


def test_an_empty_queue_is_read_again_soon_after_a_batch_and_then_less_and_less_often(tmp_path):
    """After a batch a worker looks again after 2 ms, doubling up to 50 ms, so an instance queued
    just after the worker caught up goes out within a few milliseconds."""
    import threading

    from router.backends.status import DeliveryResult
    from router.delivery.workers import BackendWorker
    from router.spool.store import Spool

    class Item:
        path, size, checksum, edited = str(tmp_path), None, None, None  # an existing path, nothing recorded to compare

    class Queue:
        def __init__(self):
            self.claims = [[Item()], [], [], [], [], [], [], [], [Item()], []]

        def claim_due(self, backend, limit):
            return self.claims.pop(0) if self.claims else []

        def take_superseded(self, backend):
            return []

        def mark_delivered_many(self, batch):
            return []

        def close(self):
            pass

    class Stop(threading.Event):
        def __init__(self):
            super().__init__()
            self.waits = []

        def wait(self, timeout=None):
            self.waits.append(timeout)
            if len(self.waits) == 9:
                self.set()
            return self.is_set()

    class Deliverer:
        def deliver(self, delivery):
            return DeliveryResult(Outcome.SUCCESS, 0, "ok")

        def idle(self):
            pass

        def close(self):
            pass

    stop = Stop()
    worker = BackendWorker("pacs", Deliverer, Queue(), Spool(tmp_path), POLICY, stop)
    worker.record = lambda delivery, result: None
    worker.run()
    assert stop.waits == [0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05, 0.002, 0.004]


def test_an_unexpected_error_in_a_deliverer_is_retried_not_quarantined(tmp_path, caplog):
    """A bug meeting one delivery logs its traceback and schedules a retry; the next attempt can
    deliver it (before, it was quarantined for good)."""
    import threading
    import time

    from router.backends.status import DeliveryResult
    from router.delivery.workers import BackendWorker
    from router.spool.checksum import file_checksum
    from router.spool.queue import DeliveryQueue, InstanceRecord
    from router.spool.store import Spool

    spooled = tmp_path / "a.dcm"
    spooled.write_bytes(b"x" * 10)
    queue = DeliveryQueue(tmp_path / "queue.db")
    queue.enqueue(
        InstanceRecord(
            str(spooled),
            "1.2.3",
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.1.2.1",
            10,
            time.time(),
            checksum=file_checksum(spooled),
        ),
        [("p", "pacs")],
    )

    class Flaky:
        calls = 0

        def deliver(self, delivery):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise KeyError("a bug")
            return DeliveryResult(Outcome.SUCCESS, 0, "ok")

    worker = BackendWorker("pacs", Flaky, queue, Spool(tmp_path), POLICY, threading.Event())
    worker.recorder = type("Recorder", (), {"add": lambda self, d, w: queue.mark_delivered(d, w)})()
    worker.deliver_batch(Flaky(), queue.claim_due("pacs", 10))
    assert queue.list_state("quarantined") == []
    (waiting,) = queue.list_state("pending")
    assert "internal error" in waiting.reason
    assert any(r.exc_info for r in caplog.records if "failed unexpectedly" in str(r.msg))
    worker.deliver_batch(Flaky(), queue.claim_due("pacs", 10, now=time.time() + 3))
    assert queue.counts()["pacs"]["delivered"] == 1
