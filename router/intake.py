"""Turn a received instance into durable, queued deliveries, and decide the C-STORE status.

This is the promise of the router: 0x0000 is returned only once the file and its
directory entry are fsynced and the queue rows are committed. 0xA700 (out of resources:
the sender retries) means the router could not store it; an instance the router cannot
understand (no SOP Class or Instance UID, a header that cannot be rewritten or encoded)
gets 0xC000 in every pipeline, so no sender retries it for ever. The received file's fsync
starts on a helper thread as soon as the file is in the spool, while the pipelines route
the instance; the commit follows on the handler's thread. An edited version whose header
alone changed is kept by reference (its header in the queue row, its pixel data in the
received file: :mod:`router.spool.edited_copies`); any other is written out and fsynced
beside it. The file is closed, or removed when it is not stored, only once its fsync is
over. A power cut between commit and fsync
can leave a row whose file is not whole, for an instance that was never acknowledged;
:func:`quarantine_damaged` quarantines such rows at start-up with the reason, as it does
for a file damaged after its acknowledgement: nothing is dropped without a word.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from router.engine.store_decode import WRITEBACK_STEP
from router.envelope import RequestEnvelope, SpooledInstance
from router.pipeline import PipelineSet, Target
from router.spool.checksum import file_checksum
from router.spool.edited_copies import MIN_PIXEL_BYTES, edited_by_reference, edited_copy_path
from router.spool.identity import Identity, UnreadableIdentity, identifying_uids
from router.spool.queue import DeliveryQueue, EditedByReference, InstanceRecord
from router.spool.splice import SpliceError
from router.spool.store import Spool, WrittenVersion

log = structlog.get_logger("router.intake")

Batch = tuple[InstanceRecord, list[tuple[str, str]], str | None]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class IntakeResult:
    status: int
    stored: bool
    reason: str = ""


class Intake:
    def __init__(self, spool: Spool, queue: DeliveryQueue, pipelines: PipelineSet, fsyncers: int = 4):
        self.spool = spool
        self.queue = queue
        self.pipelines = pipelines
        self._fsyncers = ThreadPoolExecutor(fsyncers, thread_name_prefix="spool-fsync")

    def close(self) -> None:
        self._fsyncers.shutdown(wait=True)

    def receive_store(
        self,
        envelope: RequestEnvelope,
        received: Path,
        transfer_syntax: str,
        size: int | None = None,
        received_file=None,
        checksum: str | None = None,
    ) -> IntakeResult:
        """Take ownership of the received file at ``received`` (``size`` bytes and ``checksum``,
        if known: computed from the file otherwise) and answer for it.

        ``received_file``: the file object it is still open on, detached from the request
        (:func:`router.engine.store_decode.take_received_file`); it is fsynced through it and
        closed here. The file is removed unless the instance was stored.
        """
        try:
            result = self._receive(envelope, received, transfer_syntax, size, received_file, checksum)
        except BaseException:
            _close(received_file)
            self.spool.discard(received)
            raise
        _close(received_file)
        if not result.stored:
            self.spool.discard(received)
        return result

    def _receive(
        self,
        envelope: RequestEnvelope,
        received: Path,
        transfer_syntax: str,
        size: int | None,
        received_file,
        checksum: str | None,
    ) -> IntakeResult:
        ctx = envelope.log_context()
        if not self.spool.has_free_space():
            log.error(
                "refusing instance: free space in the data directory is under the floor",
                floor_mb=self.spool.min_free_bytes // 2**20,
                **ctx,
            )
            return IntakeResult(OUT_OF_RESOURCES, False, "free space under the configured floor")
        try:
            path, entry_durable = self.spool.adopt(received)
        except OSError as exc:
            log.error("cannot move the received instance into the spool", error=str(exc), **ctx)
            return IntakeResult(OUT_OF_RESOURCES, False, f"spool write failed: {exc}")
        received_fd = None if received_file is None or received_file.closed else received_file.fileno()
        received_durable = _Fsync(self._fsyncers, self.spool, str(path), received_fd, entry_durable)
        if not self.pipelines.edits_instances(envelope.association.endpoint) or (
            (size if size is not None else os.path.getsize(path)) >= MIN_PIXEL_BYTES
        ):
            received_durable.start()
        try:
            return self._route_and_enqueue(envelope, path, transfer_syntax, size, received_durable, checksum)
        finally:
            received_durable.settle()

    def _route_and_enqueue(
        self,
        envelope: RequestEnvelope,
        path: Path,
        transfer_syntax: str,
        size: int | None,
        received_durable: _Fsync,
        checksum: str | None,
    ) -> IntakeResult:
        """Route the spooled instance at ``path`` and queue its deliveries, while ``received_durable``
        makes its file durable (started already unless a pipeline may edit a small instance: then
        only once routing shows the file as received is kept)."""
        ctx = envelope.log_context()
        identity, problem = _identify(str(path), transfer_syntax)
        if problem is not None:
            self.spool.discard(path)
            log.error("refusing instance: it cannot be identified", reason=problem, **ctx)
            return IntakeResult(CANNOT_UNDERSTAND, False, problem)
        instance = SpooledInstance(path, transfer_syntax, os.path.getsize(path) if size is None else size)
        ctx = {**ctx, "study_instance_uid": identity.study_instance_uid if identity else None, "size": instance.size}
        envelope = replace(envelope, instance=instance)
        try:
            routing = self.pipelines.route(envelope)
        except Exception as exc:
            self.spool.discard(path)
            log.error("pipeline failed on the instance", error=repr(exc), **ctx)
            return IntakeResult(CANNOT_UNDERSTAND, False, f"pipeline failed: {exc}")

        rejection = routing.rejection
        if rejection is not None:
            self.spool.discard(path)
            log.info(
                "instance rejected",
                stage=rejection.stage,
                status=f"0x{rejection.status:04X}",
                reason=rejection.reason,
                **ctx,
            )
            return IntakeResult(rejection.status, False, rejection.reason)
        targets = [t for t in routing.deliveries if t.backend not in self.pipelines.non_storing]
        if not targets:
            self.spool.discard(path)
            drops = [f"{r.verdict.stage}: {r.verdict.reason}" for r in routing.results if r.verdict]
            log.info("instance dropped", reasons=drops or ["no pipeline"], **ctx)
            return IntakeResult(SUCCESS, False, "dropped")

        written: list[WrittenVersion] = []
        try:
            batches = self._versions(envelope, instance, targets, written, checksum or file_checksum(path))
            self._make_durable_and_enqueue(batches, str(path), received_durable, written)
        except SpliceError as exc:
            for p in [w.path for w in written] + [path]:
                self.spool.discard(p)
            log.error("cannot rewrite the instance header", error=str(exc), **ctx)
            return IntakeResult(CANNOT_UNDERSTAND, False, f"cannot rewrite the header: {exc}")
        except (OSError, sqlite3.Error) as exc:
            for p in [w.path for w in written] + [path]:
                self.spool.discard(p)
            log.error("cannot make the instance durable", error=repr(exc), **ctx)
            return IntakeResult(OUT_OF_RESOURCES, False, f"durable write failed: {exc}")
        except Exception as exc:  # the edited data set cannot be encoded: retrying would not help
            for p in [w.path for w in written] + [path]:
                self.spool.discard(p)
            log.error("cannot write the edited instance", error=repr(exc), **ctx)
            return IntakeResult(CANNOT_UNDERSTAND, False, f"cannot write the edited instance: {exc}")
        finally:
            for version in written:
                _close(version.file)
        if not any(_needs(record, str(path)) for record, _, _ in batches):
            self._let_go_of_replaced(instance, received_durable)
        for _, pairs, hold in batches:
            if hold:
                log.warning(
                    "instance held in quarantine for review", reason=hold, backends=[b for _, b in pairs], **ctx
                )
        log.info(
            "instance received",
            pipelines=sorted({t.pipeline for t in targets}),
            backends=[t.backend for t in targets],
            versions=len(batches),
            **ctx,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("instance routed", stages=_audit_trail(routing), **ctx)
        return IntakeResult(SUCCESS, True)

    def _let_go_of_replaced(self, instance: SpooledInstance, received_durable: _Fsync) -> None:
        """The received file that only edited versions written out whole replace: emptied back
        among the spool's spares when it is one (no unlink now, no file to make later) and no
        writeback of it was started, else recycled off the answer's path (by the fsync threads)."""
        fd = received_durable.fd if received_durable.entry_durable else None
        if fd is not None and instance.size < WRITEBACK_STEP and self.spool.spares.give_back(str(instance.path), fd):
            return
        self._fsyncers.submit(self.spool.recycle, instance.path)

    def _versions(
        self,
        envelope: RequestEnvelope,
        received: SpooledInstance,
        targets: list[Target],
        written: list[WrittenVersion],
        checksum: str,
    ) -> list[Batch]:
        """One queue batch per (version of the instance, hold reason); edited versions kept by
        reference to the received file where their header alone changed, else written to the
        spool. ``checksum``: the received file's."""
        batches: dict[tuple[int, str | None], Batch] = {}
        by_reference = 0
        for target in targets:
            version = target.envelope.instance
            key = (id(version), target.envelope.hold_reason)
            if key not in batches:
                if version is None or version is received or not version.edited:
                    record = _record(envelope, received, checksum=checksum)
                elif version.path == received.path and (
                    edited := edited_by_reference(version, str(received.path), received.size, checksum)
                ):
                    record = _record(envelope, version, edited_copy_path(received.path, by_reference), edited=edited)
                    by_reference += 1
                else:
                    new = self.spool.write_version(version)
                    written.append(new)
                    record = _record(envelope, version, new.path, new.checksum)
                batches[key] = (record, [], target.envelope.hold_reason)
            batches[key][1].append((target.pipeline, target.backend))
        return list(batches.values())

    def _make_durable_and_enqueue(
        self, batches: list[Batch], received: str, received_durable: _Fsync, written: list[WrittenVersion]
    ) -> None:
        """Commit the rows while other threads fsync their files; return when all are done.

        ``received_durable`` makes the received file at ``received`` durable, if a row names
        it; the files of edited versions (``written``) are fsynced here. The commit runs on the calling
        thread, with no hand-off to another thread in front of it. Rows whose files could not
        be made durable are removed again before the error is raised.
        """
        paths = list(dict.fromkeys(record.path for record, _, _ in batches))
        fsyncs = [received_durable.start()] if any(_needs(record, received) for record, _, _ in batches) else []
        versions = [w for w in written if str(w.path) in paths]
        if versions:
            fsyncs.append(self._fsyncers.submit(self._make_files_durable, versions))
        try:
            instance_ids = self.queue.enqueue_many(batches)
        except BaseException:
            for fsync in fsyncs:
                _result_or_none(fsync)
            raise
        try:
            for fsync in fsyncs:
                fsync.result()
        except BaseException:
            for instance_id in instance_ids:
                self.queue.forget_instance(instance_id)
            raise

    def _make_files_durable(self, versions: list[WrittenVersion]) -> None:
        for version in versions:
            fd = version.file.fileno() if version.file is not None else None
            self.spool.make_durable(version.path, fd, version.entry_durable)


def _needs(record: InstanceRecord, received: str) -> bool:
    """Whether the queue record needs the received file at ``received``: as its own, or as the source of its pixel data."""
    return record.path == received or (record.edited is not None and record.edited.source == received)


def _identify(path: str, transfer_syntax: str) -> tuple[Identity | None, str | None]:
    """The instance's identifying UIDs (None when not scanned), and why it cannot be identified
    (no SOP Class or Instance UID), or None."""
    try:
        identity = identifying_uids(path, transfer_syntax)
    except (UnreadableIdentity, OSError, struct.error) as exc:
        return None, f"cannot read the start of the data set: {exc}"
    if identity is None:
        return None, None
    if not identity.sop_class_uid:
        return identity, "the data set has no SOP Class UID (0008,0016)"
    if not identity.sop_instance_uid:
        return identity, "the data set has no SOP Instance UID (0008,0018)"
    return identity, None


def _close(file) -> None:
    if file is not None:
        file.close()


def _audit_trail(routing) -> list[str]:
    """What each stage did, one entry per stage that did more than pass."""
    return [
        f"{e.stage}: {e.action} {e.detail}".rstrip()
        for r in routing.results
        for e in r.envelope.audit
        if e.action != "pass"
    ]


class _Fsync:
    """Making the received file durable on the fsync threads: started when asked, at most once,
    so a file that only edited versions replace is never fsynced."""

    def __init__(self, pool: ThreadPoolExecutor, spool: Spool, path: str, fd: int | None, entry_durable: bool):
        self.fd, self.entry_durable = fd, entry_durable
        self._start = lambda: pool.submit(spool.make_durable, path, fd, entry_durable)
        self._future: Future | None = None

    def start(self) -> Future:
        if self._future is None:
            self._future = self._start()
        return self._future

    def settle(self) -> None:
        """Wait for a started fsync to end (its error, if any, was reported where it mattered)."""
        if self._future is not None:
            _result_or_none(self._future)


def _result_or_none(future):
    try:
        return future.result()
    except Exception:
        return None


def quarantine_damaged(queue: DeliveryQueue) -> int:
    """At start-up: quarantine the deliveries of every instance whose spool file is missing or
    shorter than recorded, with that reason; how many instances. Nothing is forgotten or
    deleted: ``queue list`` shows them, ``queue purge`` removes them.

    After a power cut such a row may belong to an instance that was never acknowledged (the
    rows are committed while the file's fsync runs; 0x0000 waits for both); otherwise the file
    was damaged or removed after the acknowledgement. The two cannot be told apart, so the
    operator decides.
    """
    damaged = 0
    for instance_id, path, size, uid in queue.instance_files():
        try:
            actual = os.path.getsize(path)
        except OSError:
            reason = f"spool file missing: {path}"
        else:
            if actual >= size:
                continue
            reason = f"spool file shorter than recorded ({actual} of {size} bytes): {path}"
        if queue.quarantine_instance(instance_id, reason):
            damaged += 1
            log.warning("quarantined an instance whose spool file is damaged", reason=reason, sop_instance_uid=uid)
    return damaged


def _record(
    envelope: RequestEnvelope,
    instance: SpooledInstance,
    written: Path | str | None = None,
    checksum: str | None = None,
    edited: EditedByReference | None = None,
) -> InstanceRecord:
    """The queue record of a received instance, or of an edited version of it: written at
    ``written``, or kept by reference (``edited``) and written there by delivery."""
    a = envelope.association
    uid = envelope.command.affected_sop_instance_uid
    if written is not None:
        uid = instance.sop_instance_uid(uid)
    if edited is not None:
        size = len(edited.header) + edited.size - edited.offset
    else:
        size = os.path.getsize(written) if written is not None else instance.size
    return InstanceRecord(
        path=str(written or instance.path),
        sop_instance_uid=uid,
        sop_class_uid=envelope.command.sop_class_uid,
        transfer_syntax=instance.transfer_syntax,
        size=size,
        received_at=envelope.received_at,
        endpoint=a.endpoint,
        association_id=a.association_id,
        calling_aet=a.calling_aet,
        peer=f"{a.peer_host}:{a.peer_port}",
        checksum=checksum,
        edited=edited,
    )
