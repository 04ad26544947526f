"""The C-FIND proxy: one query to several upstreams, answers streamed back merged and de-duplicated.

Each upstream is queried on its own association in its own thread; answers reach the
client as they arrive, in arrival order, each once (by the unique key of the query level,
or for worklists by accession number, step ID and study). A client's C-CANCEL is sent to
every upstream still answering. An upstream that cannot be reached, breaks off or times
out is logged; if no upstream answered, the client gets 0xC001 with the reasons.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from pydicom import Dataset

from router.qr.models import result_key
from router.qr.upstream import FindCall, Upstream, UpstreamError

if TYPE_CHECKING:
    from router.qr.dicomweb_upstream import DicomwebUpstream

log = structlog.get_logger("router.qr.find")

PENDING, SUCCESS, CANCEL = 0xFF00, 0x0000, 0xFE00
UNABLE_TO_PROCESS = 0xC001
POLL_SECONDS = 0.05


@dataclass
class _Done:
    upstream: Upstream
    status: int | None
    error: str | None = None


class FindProxy:
    def __init__(
        self,
        upstreams: Sequence[Upstream | DicomwebUpstream],
        model: str,
        identifier: Dataset,
        *,
        is_cancelled: Callable[[], bool],
        transform: Callable[[Dataset], Dataset | None] = lambda d: d,
        log_context: dict | None = None,
    ):
        self.upstreams = upstreams
        self.model = model
        self.identifier = identifier
        self.is_cancelled = is_cancelled
        self.transform = transform
        self.ctx = log_context or {}
        self._answers: queue.Queue = queue.Queue(maxsize=256)
        self._calls: list[FindCall] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def responses(self) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """(status, identifier) pairs for the client, ending with a final status."""
        threads = [
            threading.Thread(target=self._ask, args=(u,), daemon=True, name=f"find-{u.name}") for u in self.upstreams
        ]
        for t in threads:
            t.start()
        seen: set[tuple] = set()
        finished: list[_Done] = []
        try:
            while len(finished) < len(threads):
                if self.is_cancelled():
                    self._cancel()
                    log.info("C-FIND cancelled by the client; cancelled upstream", **self.ctx)
                    yield CANCEL, None
                    return
                try:
                    item = self._answers.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if isinstance(item, _Done):
                    finished.append(item)
                    continue
                key = result_key(self.model, item)
                if key in seen:
                    continue
                seen.add(key)
                answer = self.transform(item)
                if answer is not None:
                    yield PENDING, answer
        finally:
            self._stopping.set()
            if len(finished) < len(threads):  # the client went away or cancelled: stop the upstreams too
                self._cancel()
        failures = [d for d in finished if d.error is not None or (d.status or 0) not in (SUCCESS, CANCEL)]
        if failures and len(failures) == len(finished):
            reasons = "; ".join(d.error or f"{d.upstream.name}: status 0x{d.status:04X}" for d in failures)
            log.error("C-FIND failed on every upstream", reasons=reasons, **self.ctx)
            only = failures[0].status if len(failures) == 1 and failures[0].error is None else None
            yield failure_status(only if only is not None else UNABLE_TO_PROCESS, reasons), None
            return
        for d in failures:
            log.warning(
                "an upstream failed the C-FIND; answering with the others",
                upstream=d.upstream.name,
                reason=d.error or f"status 0x{d.status:04X}",
                **self.ctx,
            )
        yield SUCCESS, None

    def _ask(self, upstream: Upstream) -> None:
        status, error = None, None
        try:
            call = upstream.find(self.model, self.identifier)
            with self._lock:
                self._calls.append(call)
            for status, answer in call.responses():
                if status in (PENDING, 0xFF01) and answer is not None:
                    self._put(answer)
                elif status not in (PENDING, 0xFF01):
                    break
        except UpstreamError as exc:
            error = str(exc)
        except Exception as exc:  # an upstream's bad bytes must not take the proxy down
            error = f"{upstream.describe()}: {exc!r}"
        self._answers.put(_Done(upstream, status, error))

    def _put(self, answer: Dataset) -> None:
        while not self._stopping.is_set():
            try:
                self._answers.put(answer, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _cancel(self) -> None:
        with self._lock:
            calls, self._calls = list(self._calls), []
        for call in calls:
            try:
                call.cancel()
            except Exception as exc:
                log.warning(
                    "could not send C-CANCEL upstream", upstream=call.upstream.name, error=repr(exc), **self.ctx
                )


def failure_status(status: int, comment: str) -> Dataset:
    """A status dataset with an Error Comment (LO: 64 characters at most)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds
