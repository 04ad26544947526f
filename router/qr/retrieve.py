"""Fetching instances from an upstream for a C-MOVE or C-GET the router answers.

:class:`Retrieval` first lists what the request covers (C-FIND down the hierarchy to the
IMAGE level, so strict hierarchical upstreams answer too), then fetches it:

- ``retrieve = "get"``: a C-GET on one association; the instances come back on it;
- ``retrieve = "move"``: a C-MOVE naming the router's AE title; the instances arrive as
  C-STOREs on a router endpoint, where :class:`Collector` hands them to the retrieval that
  expects them instead of to the store pipelines.

Either way every instance streams into a file in the spool's ``incoming/`` folder, and
:meth:`Retrieval.fetch` yields those files as they arrive. A retrieval made ``in_memory``
(for a WADO-RS answer, which passes each instance on at once) keeps a C-GET's instances of
up to :data:`IN_MEMORY_LIMIT` bytes in memory instead (:class:`Fetched.data`); larger ones
still go to a file as they arrive. At most :data:`IN_MEMORY_RETRIEVALS` retrievals of a
process do so at once (the others use files), each with at most :data:`IN_MEMORY_WAITING`
instances arrived and not yet taken, so what they hold stays bounded however many run.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from pydicom import Dataset
from pynetdicom import build_context
from pynetdicom.association import Association

from router.engine.spare_files import FolderFiles, MemoryFirstFiles, SpillingFile
from router.qr.models import (
    FIND_FOR_RETRIEVE,
    GET_FOR_FIND,
    HIERARCHY,
    MOVE_FOR_FIND,
    PATIENT_FIND,
)
from router.qr.upstream import Upstream, UpstreamError

if TYPE_CHECKING:
    from router.qr.dicomweb_upstream import DicomwebUpstream

log = structlog.get_logger("router.qr.retrieve")

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
POLL_SECONDS = 0.05
IN_MEMORY_LIMIT = 1024 * 1024
IN_MEMORY_WAITING = 4
IN_MEMORY_RETRIEVALS = 4
memory_slots = threading.BoundedSemaphore(IN_MEMORY_RETRIEVALS)


@dataclass(frozen=True)
class Planned:
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class Fetched:
    """An instance that arrived: in the file ``path``, or (an in-memory retrieval) in ``data``."""

    path: Path | None
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    data: bytes | None = None


class _End:
    def __init__(self, error: str | None = None):
        self.error = error


class Collector:
    """Where C-STOREs sent by an upstream for a C-MOVE retrieval are claimed (one per receiving process)."""

    def __init__(self) -> None:
        self._expected: dict[str, Retrieval] = {}
        self._lock = threading.Lock()

    def expect(self, retrieval: Retrieval, uids) -> None:
        with self._lock:
            for uid in uids:
                self._expected[uid] = retrieval

    def forget(self, retrieval: Retrieval) -> None:
        with self._lock:
            for uid in [u for u, r in self._expected.items() if r is retrieval]:
                del self._expected[uid]

    @property
    def active(self) -> bool:
        """Whether any retrieval waits for instances (checked on every C-STORE before anything else)."""
        return bool(self._expected)

    def claim(self, sop_instance_uid: str, sop_class_uid: str, transfer_syntax: str, path: Path) -> bool:
        """True when a retrieval expected this instance and took the file."""
        with self._lock:
            retrieval = self._expected.pop(sop_instance_uid, None)
        if retrieval is None:
            return False
        retrieval.accept(sop_instance_uid, sop_class_uid, transfer_syntax, path)
        return True


class Retrieval:
    def __init__(
        self,
        upstream: Upstream | DicomwebUpstream,
        retrieve_model: str,
        identifier: Dataset,
        incoming: Path,
        collector: Collector,
        move_ae_title: str,
        log_context: dict | None = None,
        in_memory: bool = False,
    ):
        self.upstream = upstream
        self.find_model = FIND_FOR_RETRIEVE[retrieve_model]
        how = upstream.backend.config.retrieve
        self.upstream_model = (GET_FOR_FIND if how == "get" else MOVE_FOR_FIND)[self.find_model]
        self.identifier = identifier
        self.incoming = Path(incoming)
        self.collector = collector
        self.move_ae_title = move_ae_title
        self.ctx = log_context or {}
        self.planned: list[Planned] = []
        self.sop_classes: list[str] = []
        self.expected = 0
        self.in_memory = in_memory
        self._arrivals: queue.Queue = queue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._assoc: Association | None = None
        self._thread: threading.Thread | None = None

    # -- planning -------------------------------------------------------------

    def plan(self, count_only: bool = False) -> int:
        """How many instances the request covers, each listed in :attr:`planned` from the
        upstream's own C-FIND answers, with their :attr:`sop_classes`.

        ``count_only`` (a retrieval whose instances need not be named one by one, for WADO-RS):
        a study fetched by C-GET is counted instead, from one STUDY-level C-FIND answer with
        its SOP Classes in Study and Number of Study Related Instances; an upstream that leaves
        them empty has its instances listed as usual."""
        level = str(self.identifier.get("QueryRetrieveLevel", "")).upper()
        if level not in LEVELS:
            raise UpstreamError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
        keys = {k: self.identifier.get(k) for k in HIERARCHY if self.identifier.get(k)}
        if count_only and level == "STUDY" and self.upstream.backend.config.retrieve == "get" and self._counted(keys):
            return self.expected
        planned = self._relational(keys) if level != "IMAGE" else None
        if not planned:
            planned = {p.sop_instance_uid: p for p in self._descend(level, keys)}
        self.planned = list(planned.values())
        self.sop_classes = sorted({p.sop_class_uid for p in self.planned if p.sop_class_uid})
        self.expected = len(self.planned)
        return self.expected

    def _counted(self, keys: dict) -> bool:
        """Whether one STUDY-level C-FIND gave the study's SOP classes and instance count (or
        found no such study); False when the upstream refused it or left either empty."""
        wanted = ("SOPClassesInStudy", "NumberOfStudyRelatedInstances")
        try:
            answers = self._find("STUDY", keys, wanted)
        except UpstreamError as exc:
            log.info("the upstream did not count the study; listing its instances", reason=str(exc), **self.ctx)
            return False
        if not answers:
            return True
        classes: set[str] = set()
        count = 0
        for answer in answers:
            value = answer.get("SOPClassesInStudy") or []
            classes.update(str(uid) for uid in ([value] if isinstance(value, str) else value))
            try:
                count += int(answer.get("NumberOfStudyRelatedInstances") or 0)
            except (TypeError, ValueError):
                return False
        if not classes or not count:
            return False
        self.sop_classes, self.expected = sorted(classes), count
        return True

    def _relational(self, keys: dict) -> dict[str, Planned] | None:
        """Every instance under ``keys`` from one IMAGE-level C-FIND (a relational query, which
        most archives answer); None when the upstream refused it or found nothing, so that a
        strictly hierarchical one is asked level by level instead."""
        try:
            answers = self._find("IMAGE", keys, ("SOPInstanceUID", "SOPClassUID"))
        except UpstreamError as exc:
            log.info("the upstream refused a relational query; listing level by level", reason=str(exc), **self.ctx)
            return None
        planned = {
            str(a.SOPInstanceUID): Planned(str(a.SOPInstanceUID), str(a.get("SOPClassUID", "")))
            for a in answers
            if a.get("SOPInstanceUID")
        }
        return planned or None

    def _descend(self, level: str, keys: dict) -> Iterator[Planned]:
        if level == "IMAGE":
            for answer in self._find("IMAGE", keys, ("SOPInstanceUID", "SOPClassUID")):
                if answer.get("SOPInstanceUID"):
                    yield Planned(str(answer.SOPInstanceUID), str(answer.get("SOPClassUID", "")))
            return
        child = LEVELS[LEVELS.index(level) + 1]
        child_key = HIERARCHY[LEVELS.index(child)]
        for answer in self._find(child, keys, (child_key,)):
            value = answer.get(child_key)
            if value:
                yield from self._descend(child, {**keys, child_key: value})

    def _find(self, level: str, keys: dict, wanted: tuple[str, ...]) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword in HIERARCHY[: LEVELS.index(level) + 1]:
            if self.find_model != PATIENT_FIND and keyword == "PatientID" and keyword not in keys:
                continue
            setattr(query, keyword, keys.get(keyword, ""))
        for keyword in wanted:
            if keyword not in query:
                setattr(query, keyword, "")
        answers = []
        for status, answer in self.upstream.find(self.find_model, query).responses():
            if status in (0xFF00, 0xFF01) and answer is not None:
                answers.append(answer)
            elif status != 0x0000:
                raise UpstreamError(f"{self.upstream.describe()}: C-FIND for the retrieval ended 0x{status:04X}")
        return answers

    # -- fetching ---------------------------------------------------------------

    def fetch(self) -> Iterator[Fetched]:
        """Start fetching and yield each instance's file as it arrives; raises UpstreamError at the end
        if the upstream failed before sending everything (what did arrive was yielded first)."""
        if not self.expected:
            return
        how = self.upstream.backend.config.retrieve
        if how == "move":
            self.collector.expect(self, [p.sop_instance_uid for p in self.planned])
        holds_slot = self.in_memory = self.in_memory and how == "get" and memory_slots.acquire(blocking=False)
        if holds_slot:
            self._arrivals.maxsize = IN_MEMORY_WAITING
        target = {"get": self._get, "move": self._move, "wado": self._wado}[str(how)]
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True, name="retrieve")
        self._thread.start()
        try:
            while True:
                try:
                    item = self._arrivals.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if self._stop.is_set() and not self._thread.is_alive():
                        return
                    continue
                if isinstance(item, _End):
                    if item.error:
                        raise UpstreamError(item.error)
                    return
                yield item
        finally:
            if holds_slot:
                memory_slots.release()
            if self._thread.is_alive():  # the requester went away or cancelled: stop the upstream too
                self.cancel()
            self.collector.forget(self)

    def cancel(self) -> None:
        """Stop the upstream retrieval (C-CANCEL) and drop what arrives afterwards."""
        self._stop.set()
        assoc = self._assoc
        if assoc is not None and assoc.is_established:
            context = next((cx for cx in assoc.accepted_contexts if cx.abstract_syntax == self.upstream_model), None)
            if context is not None:
                try:
                    assoc.send_c_cancel(1, context.context_id)
                except Exception as exc:
                    log.warning("could not cancel the upstream retrieval", error=repr(exc), **self.ctx)

    def _run(self, target) -> None:
        error = None
        try:
            target()
        except UpstreamError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"{self.upstream.describe()}: {exc!r}"
        finally:
            if self._assoc is not None and self._assoc.is_established:
                self._assoc.release()
        self._put(_End(error))

    def _get(self) -> None:
        assert isinstance(self.upstream, Upstream)
        sop_classes = self.sop_classes
        files = MemoryFirstFiles(self.incoming, IN_MEMORY_LIMIT) if self.in_memory else FolderFiles(self.incoming)
        assoc = self.upstream.retrieve_association(self.upstream_model, sop_classes, self._on_get_store, files)
        self._assoc = assoc
        self._final(assoc.send_c_get(self.identifier, self.upstream_model, msg_id=1), "C-GET")

    def _move(self) -> None:
        assert isinstance(self.upstream, Upstream)
        assoc = self.upstream.associate([build_context(self.upstream_model)])
        self._assoc = assoc
        responses = assoc.send_c_move(self.identifier, self.move_ae_title, self.upstream_model, msg_id=1)
        self._final(responses, "C-MOVE")

    def _wado(self) -> None:
        from router.qr.dicomweb_upstream import DicomwebUpstream, wado_fetch

        assert isinstance(self.upstream, DicomwebUpstream)
        wado_fetch(self.upstream, self.identifier, self.incoming, self.accept, self._stop.is_set)

    def _final(self, responses, what: str) -> None:
        last = None
        for status, _ in responses:
            if "Status" not in status:
                raise UpstreamError(f"{self.upstream.describe()}: no {what} response (timeout or abort)")
            last = int(status.Status)
            if self._stop.is_set():
                continue
        if last not in (0x0000, 0xFE00) and not (last is not None and 0xB000 <= last <= 0xBFFF):
            raise UpstreamError(f"{self.upstream.describe()}: {what} ended with status 0x{(last or 0):04X}")

    def _on_get_store(self, event) -> int:
        rq = event.request
        uids = str(rq.AffectedSOPInstanceUID), str(rq.AffectedSOPClassUID), str(event.context.transfer_syntax)
        received = rq._dataset_file
        if isinstance(received, SpillingFile):
            rq._dataset_file = None
            if not received.spilled:
                if not self._stop.is_set():
                    self._put(Fetched(None, *uids, data=received.data))
                received.close()
                return 0x0000
            received.close()  # its file stays, to be adopted
        self.accept(*uids, self._adopt(Path(event.dataset_path)))
        return 0x0000

    def _adopt(self, received: Path) -> Path:
        target = self.incoming / f"retrieved-{uuid.uuid4().hex}.dcm"
        os.replace(received, target)
        return target

    def accept(self, sop_instance_uid: str, sop_class_uid: str, transfer_syntax: str, path: Path) -> None:
        """An instance arrived (by C-GET, or claimed from an endpoint for a C-MOVE)."""
        if not path.name.startswith("retrieved-"):
            path = self._adopt(path)
        if self._stop.is_set():
            path.unlink(missing_ok=True)
            return
        self._put(Fetched(path, sop_instance_uid, sop_class_uid, transfer_syntax))

    def _put(self, item) -> None:
        while True:
            try:
                self._arrivals.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                if self._stop.is_set() and isinstance(item, Fetched):
                    if item.path is not None:
                        item.path.unlink(missing_ok=True)
                    return
