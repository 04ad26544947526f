"""Delivery workers: empty one backend's queue, attempt by attempt.

Each backend gets ``concurrency`` workers; each claims a batch of due deliveries, hands
them to its deliverer (one association, reused) and records every result at once. A
backend that cannot be reached puts the batch back untried and waits, with its own
backoff, so one dead backend never stalls the others. Before each attempt the spool file is
checked against the size and checksum recorded at intake (:mod:`router.spool.checksum`): a
missing, resized or changed file is quarantined with that reason, never delivered. For an
edited version kept by reference that file is the received one, and the version is then
written out whole for the backend (:mod:`router.spool.edited_copies`). While
idle, a worker removes the deliveries a newer version of the same instance superseded
(:meth:`~router.spool.queue.DeliveryQueue.take_superseded`).

Successes are recorded by a :class:`SuccessRecorder` beside each worker: it commits them in
batches and removes the spool files nobody needs, while the worker already sends the next
instance. A success not yet committed when the process dies is still ``in_flight`` in the
queue, so it is sent again after the restart (a duplicate, never a loss).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import structlog

from router.backends.status import DeliveryResult, Outcome
from router.spool.checksum import damage
from router.spool.edited_copies import write_edited_copy
from router.spool.queue import Delivery, DeliveryQueue
from router.spool.retry import RetryPolicy
from router.spool.store import Spool

log = structlog.get_logger("router.delivery")

BATCH_SIZE = 32
IDLE_POLL_SECONDS = 0.05
FIRST_IDLE_POLL_SECONDS = 0.002


def next_idle_poll(seconds: float) -> float:
    """How long to wait before looking at an empty queue again: twice as long as last time, up to
    ``IDLE_POLL_SECONDS``.

    After a batch the worker looks again after 2 ms, then 4, 8 ms and so on: while instances
    keep arriving (the worker caught up with a sender) one is sent a few milliseconds after
    it was queued instead of up to 50 ms later, and an idle queue is still read only twenty
    times a second.
    """
    return min(seconds * 2, IDLE_POLL_SECONDS)


class Deliverer(Protocol):
    """Sends deliveries one at a time."""

    def deliver(self, delivery: Delivery) -> DeliveryResult: ...
    def idle(self) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class GroupingDeliverer(Deliverer, Protocol):
    """A deliverer that can send several deliveries in one request (STOW-RS)."""

    def group(self, deliveries: list[Delivery]) -> list[list[Delivery]]: ...
    def deliver_many(self, deliveries: list[Delivery]) -> list[DeliveryResult]: ...


class SuccessRecorder:
    """Commits successful deliveries in batches and removes spool files, on its own thread."""

    def __init__(self, queue: DeliveryQueue, spool: Spool, name: str):
        self.queue = queue
        self.spool = spool
        self._pending: list[tuple[Delivery, bool]] = []
        self._changed = threading.Condition()
        self._added = 0
        self._recorded = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, delivery: Delivery, warning: bool) -> None:
        with self._changed:
            self._pending.append((delivery, warning))
            self._added += 1
            self._changed.notify_all()

    def wait_recorded(self) -> None:
        """Return once everything added so far is committed (or the recorder has died)."""
        with self._changed:
            target = self._added
            while self._recorded < target and self._thread.is_alive():
                self._changed.wait(0.5)

    def close(self) -> None:
        self.wait_recorded()
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._pending and not self._closing:
                        self._changed.wait()
                    if not self._pending:
                        return
                    batch, self._pending = self._pending, []
                self._record(batch)
                with self._changed:
                    self._recorded += len(batch)
                    self._changed.notify_all()
        finally:
            self.queue.close()

    def _record(self, batch: list[tuple[Delivery, bool]]) -> None:
        try:
            paths = self.queue.mark_delivered_many(batch)
        except Exception:
            log.exception(
                "cannot record deliveries; they will be sent again after a restart",
                deliveries=len(batch),
                backend=batch[0][0].backend,
            )
            return
        for path in paths:
            if path:
                self.spool.discard_instance(path)


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
        self.recorder = SuccessRecorder(self.queue, self.spool, name=f"{self.name}-record")
        try:
            poll = IDLE_POLL_SECONDS
            while not self.stop_event.is_set():
                batch = self.queue.claim_due(self.backend, BATCH_SIZE)
                if not batch:
                    for path in self.queue.take_superseded(self.backend):
                        self.spool.discard_instance(path)
                    deliverer.idle()
                    self.stop_event.wait(poll)
                    poll = next_idle_poll(poll)
                    continue
                poll = FIRST_IDLE_POLL_SECONDS
                self.deliver_batch(deliverer, batch)
        except Exception:
            log.exception("delivery worker crashed", backend=self.backend)
            raise
        finally:
            self.recorder.close()
            deliverer.close()
            self.queue.close()

    def deliver_batch(self, deliverer: Deliverer, batch: list[Delivery]) -> None:
        """Send a claimed batch, in the requests the deliverer groups it into (one instance each
        unless it has ``group`` and ``deliver_many``, as STOW-RS does)."""
        grouping = deliverer if isinstance(deliverer, GroupingDeliverer) else None
        groups = grouping.group(batch) if grouping is not None else [[d] for d in batch]
        for index, group in enumerate(groups):
            later = [d for g in groups[index + 1 :] for d in g]
            if self.stop_event.is_set():
                self.queue.postpone(group + later, time.time(), "router stopping")
                return
            sendable = [d for d in group if self._ready_to_send(d)]
            if not sendable:
                continue
            try:
                if grouping is not None and len(sendable) > 1:
                    results = grouping.deliver_many(sendable)
                else:
                    results = [deliverer.deliver(sendable[0])]
            except Exception as exc:  # a bug must not stop the queue, nor lose the delivery for good
                log.exception("delivery attempt failed unexpectedly; it will be retried", **sendable[0].log_context())
                results = [DeliveryResult(Outcome.TRANSIENT, None, f"internal error: {exc!r}")] * len(sendable)
            for position, (delivery, result) in enumerate(zip(sendable, results, strict=True)):
                if result.outcome is Outcome.UNREACHABLE:
                    self.backend_unreachable(sendable[position:] + later, result)
                    return
                self.unreachable_streak = 0
                self.record(delivery, result)

    def _ready_to_send(self, delivery: Delivery) -> bool:
        """Check the spool file against its intake record and, for an edited version kept by
        reference, write the version out; False when the delivery was recorded instead of sent:
        quarantined when the file is damaged, retried later when it cannot be checked or written."""
        edited = delivery.edited
        try:
            if edited is None:
                damaged = damage(delivery.path, delivery.size, delivery.checksum)
            else:
                damaged = damage(edited.source, edited.size, edited.checksum)
        except Exception as exc:
            log.exception("cannot check the spool file; the delivery will be retried", **delivery.log_context())
            self.record(delivery, DeliveryResult(Outcome.TRANSIENT, None, f"cannot check the spool file: {exc!r}"))
            return False
        if damaged is not None:
            self.record(delivery, DeliveryResult(Outcome.PERMANENT, None, damaged))
            return False
        if edited is None:
            return True
        try:
            write_edited_copy(delivery.path, edited, delivery.size)
        except Exception as exc:
            log.warning(
                "cannot write the edited version out; the delivery will be retried",
                error=repr(exc),
                **delivery.log_context(),
            )
            self.record(
                delivery, DeliveryResult(Outcome.TRANSIENT, None, f"cannot write the edited version out: {exc!r}")
            )
            return False
        return True

    def record(self, delivery: Delivery, result: DeliveryResult) -> None:
        """Record the outcome of one attempt, with one log line naming the backend, the status,
        the attempts so far and the seconds since the instance was queued."""
        now = time.time()
        attempts = delivery.attempts + 1
        ctx = {
            **delivery.log_context(),
            "status": _hex(result.status),
            "attempts": attempts,
            "queued_s": round(now - delivery.queued_at, 3),
        }
        if result.delivered:
            self.recorder.add(delivery, result.outcome is Outcome.WARNING)
            if result.outcome is Outcome.WARNING:
                log.warning("delivered with a warning", reason=result.reason, **ctx)
            else:
                log.info("delivered", **ctx)
            return
        if result.outcome is Outcome.PERMANENT:
            give_up = "permanent failure"
        else:
            give_up = self.policy.give_up_reason(attempts, delivery.queued_at, now) or ""
        if give_up:
            reason = f"{result.reason} ({give_up})"
            self.queue.quarantine(delivery, result.status, reason, failure=result.outcome.value)
            log.error("delivery quarantined", reason=reason, **ctx)
            return
        delay = self.policy.delay(attempts)
        self.queue.schedule_retry(delivery, now + delay, result.status, result.reason, failure=result.outcome.value)
        log.warning("delivery failed, will retry", reason=result.reason, retry_in_s=round(delay, 1), **ctx)

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
        log.warning(
            "backend unreachable",
            backend=self.backend,
            reason=result.reason,
            waiting=len(waiting),
            retry_in_s=round(delay, 1),
        )
        self.stop_event.wait(delay)


def _hex(status: int | None) -> str | None:
    return None if status is None else f"0x{status:04X}"
