"""Delivery workers: empty one backend's queue, attempt by attempt.

Each backend gets ``concurrency`` workers; each claims a batch of due deliveries, hands
them to its deliverer (one association, reused) and records every result at once. A
backend that cannot be reached puts the batch back untried and waits, with its own
backoff, so one dead backend never stalls the others.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

import structlog

from router.backends.status import DeliveryResult, Outcome
from router.spool.queue import Delivery, DeliveryQueue
from router.spool.retry import RetryPolicy
from router.spool.store import Spool

log = structlog.get_logger("router.delivery")

BATCH_SIZE = 32
IDLE_POLL_SECONDS = 0.05


class Deliverer(Protocol):
    def deliver(self, delivery: Delivery) -> DeliveryResult: ...
    def idle(self) -> None: ...
    def close(self) -> None: ...


class BackendWorker(threading.Thread):
    def __init__(
        self,
        backend: str,
        open_deliverer: Callable[[], Deliverer],
        queue: DeliveryQueue,
        spool: Spool,
        policy: RetryPolicy,
        stop: threading.Event,
        index: int = 0,
    ):
        super().__init__(name=f"deliver-{backend}-{index}", daemon=True)
        self.backend = backend
        self.open_deliverer = open_deliverer
        self.queue = queue
        self.spool = spool
        self.policy = policy
        self.stop_event = stop
        self.unreachable_streak = 0

    def run(self) -> None:
        deliverer = self.open_deliverer()
        try:
            while not self.stop_event.is_set():
                batch = self.queue.claim_due(self.backend, BATCH_SIZE)
                if not batch:
                    deliverer.idle()
                    self.stop_event.wait(IDLE_POLL_SECONDS)
                    continue
                self.deliver_batch(deliverer, batch)
        except Exception:
            log.exception("delivery worker crashed", backend=self.backend)
            raise
        finally:
            deliverer.close()
            self.queue.close()

    def deliver_batch(self, deliverer: Deliverer, batch: list[Delivery]) -> None:
        for i, delivery in enumerate(batch):
            if self.stop_event.is_set():
                self.queue.postpone(batch[i:], time.time(), "router stopping")
                return
            try:
                result = deliverer.deliver(delivery)
            except Exception as exc:  # a bug or an unreadable file must not stop the queue
                log.exception("delivery attempt failed unexpectedly", **delivery.log_context())
                result = DeliveryResult(Outcome.PERMANENT, None, f"internal error: {exc!r}")
            if result.outcome is Outcome.UNREACHABLE:
                self.backend_unreachable(batch[i:], result)
                return
            self.unreachable_streak = 0
            self.record(delivery, result)

    def record(self, delivery: Delivery, result: DeliveryResult) -> None:
        ctx = delivery.log_context()
        if result.delivered:
            path = self.queue.mark_delivered(delivery, warning=result.outcome is Outcome.WARNING)
            if path:
                self.spool.discard(path)
            if result.outcome is Outcome.WARNING:
                log.warning("delivered with a warning", reason=result.reason, **ctx)
            else:
                log.debug("delivered", **ctx)
            return
        now = time.time()
        attempts = delivery.attempts + 1
        if result.outcome is Outcome.PERMANENT:
            give_up = "permanent failure"
        else:
            give_up = self.policy.give_up_reason(attempts, delivery.queued_at, now)
        if give_up:
            reason = f"{result.reason} ({give_up})"
            self.queue.quarantine(delivery, result.status, reason, failure=result.outcome.value)
            log.error("delivery quarantined", reason=reason, attempts=attempts, **ctx)
            return
        delay = self.policy.delay(attempts)
        self.queue.schedule_retry(delivery, now + delay, result.status, result.reason, failure=result.outcome.value)
        log.warning("delivery failed, will retry", reason=result.reason, attempts=attempts,
                    retry_in_s=round(delay, 1), **ctx)

    def backend_unreachable(self, untried: list[Delivery], result: DeliveryResult) -> None:
        self.unreachable_streak += 1
        delay = self.policy.delay(self.unreachable_streak)
        now = time.time()
        expired = [d for d in untried if self.policy.give_up_reason(0, d.queued_at, now)]
        for delivery in expired:
            reason = f"{result.reason} ({self.policy.give_up_reason(0, delivery.queued_at, now)})"
            self.queue.quarantine(delivery, None, reason, count_attempt=False, failure="unreachable")
            log.error("delivery quarantined", reason=reason, **delivery.log_context())
        waiting = [d for d in untried if d not in expired]
        self.queue.postpone(waiting, now + delay, result.reason, unreachable=True)
        log.warning("backend unreachable", backend=self.backend, reason=result.reason, waiting=len(waiting),
                    retry_in_s=round(delay, 1))
        self.stop_event.wait(delay)
