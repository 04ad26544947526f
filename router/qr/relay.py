"""Retrieved instances through the pipeline's middleware, on their way to the requester.

A retrieved instance is a request like a received one: the stages of the pipeline that
chose the upstream (filter, coerce, anonymize...) run on it, so a research destination
gets what the research pipeline makes of it. The backends the pipeline would choose do
not apply: the destination is the C-MOVE destination or the C-GET requester. An instance
a stage drops, rejects or holds for review is not sent and counts as a failed
sub-operation. Files are removed once sent.

Each instance goes as its file when the destination accepted the file's transfer syntax for
its SOP class; otherwise it is written in one the destination accepted, chosen when the
sub-operation is sent (:meth:`Relay.file_dataset`): uncompressed first, then JPEG 2000,
JPEG-LS or RLE Lossless, never a lossy one. One that cannot be written in any of them
counts as failed, with the reason logged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import structlog
from pydicom import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from router.engine.file_datasets import FileBackedDataset
from router.envelope import AssociationInfo, Command, RequestEnvelope, SpooledInstance
from router.pipeline import Pipeline
from router.qr.retrieve import Fetched, Retrieval
from router.spool.store import Spool
from router.transcode.syntaxes import CannotTranscode, describe
from router.transcode.variants import write_in_syntax

log = structlog.get_logger("router.qr.relay")

CANCEL, PENDING = 0xFE00, 0xFF00
WARNING_SUBOPS_FAILED, FAILURE_SUBOPS = 0xB000, 0xA702
LOSSLESS_PREFERENCE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless)


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

    def responses(self, is_cancelled, what: str) -> Iterator:
        """A retrieve SCP handler's ``(status, dataset)`` yields after the count: ``(0xFF00, file dataset)``
        per instance, then the end: 0xFE00 when the client cancelled (the upstream is cancelled
        too), else the failed list, if any."""
        for fetched, path in self.instances():
            if is_cancelled():
                self.retrieval.cancel()
                log.info(f"{what} cancelled by the client; cancelled upstream", **self.ctx)
                yield CANCEL, None
                return
            assert isinstance(path, Path)  # a DIMSE retrieval is never made in memory
            self.sent.add(fetched.sop_instance_uid)
            yield PENDING, self.file_dataset(fetched, path)
        yield from self._final_status(what)

    def file_dataset(self, fetched: Fetched, path: Path) -> FileBackedDataset:
        """The instance in ``path`` as the sub-operation's dataset, written in another syntax
        when it is sent if the destination did not accept its own."""
        instance_uid, syntax = fetched.sop_instance_uid, fetched.transfer_syntax
        if path != fetched.path:
            meta = read_file_meta_info(path)
            instance_uid, syntax = str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID)

        def convert(accepted: set[str]) -> Path | None:
            return self._converted(fetched, path, syntax, accepted)

        return FileBackedDataset(path, fetched.sop_class_uid, instance_uid, syntax, convert)

    def _converted(self, fetched: Fetched, path: Path, syntax: str, accepted: set[str]) -> Path | None:
        """``path`` written in the first syntax of :data:`LOSSLESS_PREFERENCE` that ``accepted`` holds
        and the instance fits (removed with the instance's other files), else None: the instance
        then counts as failed, with the reason logged."""
        ctx = {**self.ctx, "sop_instance_uid": fetched.sop_instance_uid, "transfer_syntax": syntax}
        converted = path.with_name(path.name + ".converted")
        self._files.append(converted)
        reasons = []
        for target in (s for s in LOSSLESS_PREFERENCE if s in accepted):
            try:
                write_in_syntax(path, syntax, target, converted)
            except (CannotTranscode, OSError) as exc:
                reasons.append(f"{describe(target)}: {exc}")
                continue
            log.info("retrieved instance written in a syntax the destination accepted", target=target, **ctx)
            return converted
        self.sent.discard(fetched.sop_instance_uid)
        self.refused.append(fetched.sop_instance_uid)
        why = "; ".join(reasons) or "it accepted only " + ", ".join(sorted(map(describe, accepted)))
        log.warning("retrieved instance not sent: not writable in a syntax the destination accepted", reason=why, **ctx)
        return None

    def instances(self) -> Iterator[tuple[Fetched, Path | bytes]]:
        """(fetched, file to send) for each instance the stages let through; cleans up after each.
        An instance fetched into memory comes as its bytes when the pipeline has no stage to
        run on it, else it is written to a file first."""
        try:
            for fetched in self.retrieval.fetch():
                self._clean()
                if fetched.data is not None:
                    if not self.pipeline.stages:
                        yield fetched, fetched.data
                        continue
                    fetched = self._written(fetched)
                assert fetched.path is not None
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

    def _written(self, fetched: Fetched) -> Fetched:
        """``fetched``, its bytes written to a file in the spool's ``incoming/`` folder."""
        path = self.spool.incoming / f"retrieved-{uuid.uuid4().hex}.dcm"
        self._files.append(path)
        path.write_bytes(fetched.data or b"")
        return replace(fetched, path=path, data=None)

    def _through_pipeline(self, fetched: Fetched) -> Path | None:
        assert fetched.path is not None
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
        if instance is None or not instance.edited:
            return fetched.path
        path = self.spool.write_version(instance, self.spool.incoming).path
        self._files.append(path)
        return path

    def _clean(self) -> None:
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files = []
