"""Retrieved instances through the pipeline's middleware, on their way to the requester.

A retrieved instance is a request like a received one: the stages of the pipeline that
chose the upstream (filter, coerce, anonymize...) run on it, so a research destination
gets what the research pipeline makes of it. The backends the pipeline would choose do
not apply: the destination is the C-MOVE destination or the C-GET requester. An instance
a stage drops, rejects or holds for review is not sent and counts as a failed
sub-operation. Files are removed once sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import structlog
from pydicom import Dataset
from pydicom.filereader import read_file_meta_info

from router.envelope import AssociationInfo, Command, RequestEnvelope, SpooledInstance
from router.pipeline import Pipeline
from router.qr.retrieve import Fetched, Retrieval
from router.spool.store import Spool

log = structlog.get_logger("router.qr.relay")

CANCEL, PENDING = 0xFE00, 0xFF00
WARNING_SUBOPS_FAILED, FAILURE_SUBOPS = 0xB000, 0xA702


class Relay:
    def __init__(
        self, retrieval: Retrieval, pipeline: Pipeline, spool: Spool, association: AssociationInfo, log_context: dict
    ):
        self.retrieval = retrieval
        self.pipeline = pipeline
        self.spool = spool
        self.association = association
        self.ctx = log_context
        self.sent: set[str] = set()
        self.refused: list[str] = []
        self._files: list[Path] = []

    def responses(self, payload_for: Callable[[Fetched, Path], Dataset | None], is_cancelled, what: str) -> Iterator:
        """A retrieve SCP handler's ``(status, dataset)`` yields after the count: ``(0xFF00, payload)`` per
        instance (``payload_for`` returns None for one the requester cannot take), then the end:
        0xFE00 when the client cancelled (the upstream is cancelled too), else the failed list, if any."""
        for fetched, path in self.instances():
            if is_cancelled():
                self.retrieval.cancel()
                log.info(f"{what} cancelled by the client; cancelled upstream", **self.ctx)
                yield CANCEL, None
                return
            payload = payload_for(fetched, path)
            if payload is None:
                self.refused.append(fetched.sop_instance_uid)
                continue
            self.sent.add(fetched.sop_instance_uid)
            yield PENDING, payload
        yield from self._final_status(what)

    def instances(self) -> Iterator[tuple[Fetched, Path]]:
        """(fetched, file to send) for each instance the stages let through; cleans up after each."""
        try:
            for fetched in self.retrieval.fetch():
                self._clean()
                self._files.append(fetched.path)
                path = self._through_pipeline(fetched)
                if path is None:
                    self.refused.append(fetched.sop_instance_uid)
                    continue
                yield fetched, path
        finally:
            self._clean()

    def _final_status(self, what: str) -> Iterator:
        """Nothing when everything planned was sent; else 0xB000 (some sent) or 0xA702 with the failed list."""
        missing = self.missing()
        if not missing:
            return
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = missing
        log.warning(
            f"{what} incomplete", sent=len(self.sent), failed=len(missing), refused=len(self.refused), **self.ctx
        )
        yield (WARNING_SUBOPS_FAILED if self.sent else FAILURE_SUBOPS), failed

    def missing(self) -> list[str]:
        """Planned instances that were not sent: never arrived, or refused by a stage."""
        return [p.sop_instance_uid for p in self.retrieval.planned if p.sop_instance_uid not in self.sent]

    def _through_pipeline(self, fetched: Fetched) -> Path | None:
        envelope = RequestEnvelope(
            association=self.association,
            command=Command("store", fetched.sop_class_uid, 1, affected_sop_instance_uid=fetched.sop_instance_uid),
            instance=SpooledInstance(fetched.path, fetched.transfer_syntax, fetched.path.stat().st_size),
        )
        result = self.pipeline.run(envelope)
        ctx = {**self.ctx, "sop_instance_uid": fetched.sop_instance_uid}
        if result.verdict is not None:
            log.info(
                "retrieved instance not sent: a stage refused it",
                stage=result.verdict.stage,
                reason=result.verdict.reason,
                **ctx,
            )
            return None
        if result.envelope.hold_reason:
            log.warning("retrieved instance not sent: held for review", reason=result.envelope.hold_reason, **ctx)
            return None
        instance = result.envelope.instance
        if not instance.edited:
            return fetched.path
        path, _ = self.spool.write_version(instance, self.spool.incoming)
        self._files.append(path)
        return path

    def remove_after_sending(self, path: Path) -> None:
        """Remove ``path`` (a converted copy of the current instance) with the instance's own files."""
        self._files.append(path)

    def _clean(self) -> None:
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files = []


def file_instance_uid(path: Path, fetched: Fetched) -> str:
    """The SOP Instance UID a file carries (a stage may have changed it), from its file meta."""
    try:
        return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
    except Exception:
        return fetched.sop_instance_uid
