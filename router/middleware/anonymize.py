"""``anonymize``: DICOM PS3.15 Annex E de-identification with keyed pseudonyms.

```toml
[[pipelines.research.middleware]]
type = "anonymize"
key_file = "/etc/dicom-router/research.key"      # the secret: UIDs, pseudonyms, date shifts
options = ["retain_longitudinal_modified_dates", "clean_descriptors"]
date_shift_days = [1, 3650]                       # whole days back, keyed per patient
pseudonym_prefix = "ANON"
patient_table = "patients.csv"                    # optional: PatientID,PseudonymID[,PseudonymName]
unmapped_patient = "reject"                       # with a table: reject | pseudonym
burned_in_annotation = "quarantine"               # reject | quarantine | pass
mapping_file = "/var/lib/dicom-router/reid.csv"   # optional, written 0600
safe_private = [{ group = 0x0019, creator = "ACME 1.0", elements = [0x10] }]
```

See :mod:`router.deid` for the profile and what each action does. The stage edits the
header only; the intake writes it ahead of the original pixel data bytes.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import structlog
from pydantic import Field, field_validator, model_validator

from router.config.checks import writable_dir_problem
from router.config.models import MiddlewareConfig
from router.config.registry import register
from router.config.types import ConfigPath, StrictModel
from router.deid.deidentify import (
    Deidentifier,
    Report,
    SafePrivate,
    Settings,
    UnmappedPatient,
)
from router.deid.keys import KeyFileError, Keyring, read_key
from router.deid.profile import OPTIONS, resolve
from router.envelope import Reject, RequestEnvelope
from router.middleware.anonymize_stream import StreamedFile, open_stream
from router.spool.element_stream import NotStreamable
from router.spool.long_sequences import rewrite_sequence_items
from router.tables import LookupError_, LookupTable

log = structlog.get_logger("router.anonymize")

# SOP classes that usually carry burned-in text when BurnedInAnnotation is absent.
BURNED_IN_PRONE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture (and its multi-frame variants)
    "1.2.840.10008.5.1.4.1.1.6.",  # ultrasound
    "1.2.840.10008.5.1.4.1.1.3.1",  # ultrasound multi-frame
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
)
BURNED_IN_ANNOTATION = 0x00280301


class SafePrivateConfig(StrictModel):
    group: int = Field(ge=0x0009, le=0xFFFF)
    creator: str = Field(min_length=1, max_length=64)
    elements: list[int] | None = None

    @field_validator("group")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"group 0x{value:04X} is not private (private groups are odd)")
        return value

    @field_validator("elements")
    @classmethod
    def _low_bytes(cls, value: list[int] | None) -> list[int] | None:
        for element in value or ():
            if not 0x10 <= element <= 0xFF:
                raise ValueError(f"element 0x{element:02X}: give the low byte of the private element (0x10-0xFF)")
        return value


class AnonymizeConfig(MiddlewareConfig):
    type: Literal["anonymize"] = "anonymize"
    key_file: ConfigPath
    options: list[Literal[OPTIONS]] = []  # type: ignore[valid-type]
    date_shift_days: tuple[int, int] = (1, 3650)
    pseudonym_prefix: str = Field(default="ANON", max_length=32, pattern=r"^[A-Za-z0-9_-]*$")
    patient_table: ConfigPath | None = None
    unmapped_patient: Literal["reject", "pseudonym"] = "reject"
    reject_status: int = Field(default=0xA900, ge=1, le=0xFFFF)
    burned_in_annotation: Literal["reject", "quarantine", "pass"] = "quarantine"
    mapping_file: ConfigPath | None = None
    safe_private: list[SafePrivateConfig] = []

    @field_validator("options")
    @classmethod
    def _options_combine(cls, value: list[str]) -> list[str]:
        resolve(frozenset(value))
        return value

    @field_validator("date_shift_days")
    @classmethod
    def _shift_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 0 <= low <= high <= 36500:
            raise ValueError("date_shift_days = [min, max] with 0 <= min <= max <= 36500")
        return value

    @model_validator(mode="after")
    def _safe_private_needs_its_option(self) -> AnonymizeConfig:
        if self.safe_private and "retain_safe_private" not in self.options:
            raise ValueError("safe_private lists attributes for the retain_safe_private option, which is not selected")
        return self

    def environment_problems(self) -> list[tuple[str, str, str]]:
        """A key file or patient table missing, unreadable or malformed (errors: files are made
        after the configuration, with ``keygen``), one every user can read (a warning; the
        router's own group may), an unwritable mapping folder."""
        problems = []
        try:
            read_key(self.key_file)
        except KeyFileError as exc:
            problems.append(("key_file", f"{exc} (create one with `dicom-router keygen {self.key_file}`)", "error"))
        if self.patient_table is not None:
            try:
                LookupTable.load(self.patient_table, "PatientID", ("PseudonymID",))
            except LookupError_ as exc:
                problems.append(("patient_table", str(exc), "error"))
        for key in ("key_file", "patient_table"):
            path = getattr(self, key)
            if path is not None and path.exists() and path.stat().st_mode & 0o007:
                problems.append(
                    (
                        key,
                        f"{path} is readable by every user; chmod 600 it (or 640 with the "
                        "router's own group as its group)",
                        "warning",
                    )
                )
        if self.mapping_file is not None:
            problem = writable_dir_problem(self.mapping_file.parent)
            if problem:
                problems.append(("mapping_file", problem, "error"))
        return problems

    def settings(self) -> Settings:
        table = LookupTable.load(self.patient_table, "PatientID", ("PseudonymID",)) if self.patient_table else None
        low, high = self.date_shift_days
        return Settings(
            profile=resolve(frozenset(self.options)),
            keys=Keyring(read_key(self.key_file), low, high),
            pseudonym_prefix=self.pseudonym_prefix,
            patient_table=table,
            safe_private=tuple(
                SafePrivate(s.group, s.creator, tuple(s.elements) if s.elements is not None else None)
                for s in self.safe_private
            ),
        )


class AnonymizeStage:
    edits_instances = True

    def __init__(self, name: str, config: AnonymizeConfig):
        self.name = name
        self.config = config
        self.settings = config.settings()
        self.deidentifier = Deidentifier(self.settings, rewrite_sequence_items)
        self.fallback = None
        if self.settings.patient_table is not None and config.unmapped_patient == "pseudonym":
            self.fallback = Deidentifier(replace(self.settings, patient_table=None), rewrite_sequence_items)
        self.mapping = MappingFile(config.mapping_file) if config.mapping_file else None

    def without_side_effects(self) -> AnonymizeStage:
        """This stage without its re-identification map, for dry runs."""
        quiet = copy.copy(self)
        quiet.mapping = None
        return quiet

    def __call__(self, envelope: RequestEnvelope) -> RequestEnvelope | Reject:
        """De-identify the instance: as received, over its raw element stream
        (:mod:`router.middleware.anonymize_stream`) when that covers it, else (or after an earlier
        stage's edit) on its pydicom data set; both give the same bytes."""
        if envelope.instance is None:
            return envelope  # a query identifier: de-identification applies to instances
        if not envelope.instance.edited:
            try:
                return self._streamed(envelope, open_stream(envelope.instance.path))
            except NotStreamable:
                pass
            except Exception as exc:  # a defect of the stream way: the data set way still de-identifies
                log.warning(
                    "de-identification over the element stream failed; the data set walk takes the instance",
                    stage=self.name,
                    error=repr(exc),
                    **envelope.log_context(),
                )
        ds = envelope.editable_dataset()
        burned_in = burned_in_reason(ds, envelope.command.sop_class_uid)
        if burned_in and self.config.burned_in_annotation == "reject":
            return Reject(self.name, self.config.reject_status, burned_in)
        try:
            report = self.deidentifier.apply(ds)
        except UnmappedPatient as exc:
            if self.fallback is None:
                return Reject(self.name, self.config.reject_status, str(exc))
            report = self.fallback.apply(ds)
        return self._done(envelope, envelope.with_dataset(ds), report, burned_in)

    def _streamed(self, envelope: RequestEnvelope, file: StreamedFile) -> RequestEnvelope | Reject:
        sop_class = file.sop_class_uid if file.sop_class_uid is not None else envelope.command.sop_class_uid
        burned_in = burned_in_reason_for(file.burned_in_annotation, sop_class)
        if burned_in and self.config.burned_in_annotation == "reject":
            return Reject(self.name, self.config.reject_status, burned_in)
        try:
            encoded, report = file.deidentify(self.deidentifier)
        except UnmappedPatient as exc:
            if self.fallback is None:
                return Reject(self.name, self.config.reject_status, str(exc))
            encoded, report = file.deidentify(self.fallback)
        return self._done(envelope, envelope.with_encoded(encoded), report, burned_in)

    def _done(
        self, envelope: RequestEnvelope, out: RequestEnvelope, report: Report, burned_in: str | None
    ) -> RequestEnvelope:
        if self.mapping is not None:
            self.mapping.record(report, envelope)
        out = out.with_audit(self.name, "anonymize", report.summary())
        if burned_in and self.config.burned_in_annotation == "quarantine":
            out = out.held(f"{self.name}: {burned_in}")
        return out


def burned_in_reason(ds, sop_class_uid: str | None) -> str | None:
    """Why the pixel data may carry burned-in identifying text, or None."""
    value = str(ds.get(BURNED_IN_ANNOTATION).value or "") if BURNED_IN_ANNOTATION in ds else None
    return burned_in_reason_for(value, str(ds.get("SOPClassUID", sop_class_uid) or ""))


def burned_in_reason_for(burned_in_annotation: str | None, sop_class_uid: str | None) -> str | None:
    """Why the pixel data may carry burned-in identifying text, or None: from the Burned In
    Annotation value (None when the element is absent) and the SOP class."""
    value = None if burned_in_annotation is None else burned_in_annotation.strip().upper()
    if value == "YES":
        return "BurnedInAnnotation is YES"
    sop = str(sop_class_uid or "")
    if value is None and sop.startswith(BURNED_IN_PRONE_PREFIXES):
        return f"BurnedInAnnotation is absent on SOP class {sop}, which usually carries burned-in text"
    return None


class MappingFile:
    """Original <-> pseudonym pairs appended to a CSV file only its owner can read (0600).

    One line per patient, study and series the first time this process sees them, and
    one per instance. Lines are appended whole (O_APPEND), so processes can share a file.
    """

    HEADER = "recorded_at,kind,original,pseudonym,assoc_id,calling_aet\n"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def record(self, report: Report, envelope: RequestEnvelope) -> None:
        rows = []
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        a = envelope.association
        header = envelope.instance.header if envelope.instance is not None else None
        for kind, pair in (("patient_id", report.patient_id), ("patient_name", report.patient_name)):
            if pair and pair[0]:
                rows.append((kind, *pair))
        for kind, keyword in (
            ("study_uid", "StudyInstanceUID"),
            ("series_uid", "SeriesInstanceUID"),
            ("sop_instance_uid", "SOPInstanceUID"),
        ):
            original = str(header.get(keyword, "")) if header is not None else ""
            if original in report.uids:
                rows.append((kind, original, report.uids[original]))
        if report.date_shift_days is not None and report.patient_id:
            rows.append(("date_shift_days", report.patient_id[0], str(report.date_shift_days)))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        with self._lock:
            for kind, original, pseudonym in rows:
                if kind != "sop_instance_uid":
                    if (kind, original) in self._seen:
                        continue
                    self._seen.add((kind, original))
                writer.writerow((stamp, kind, original, pseudonym, a.association_id, a.calling_aet))
            if buffer.tell():
                self._append(buffer.getvalue())

    def _append(self, text: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            if os.fstat(fd).st_size == 0:
                text = self.HEADER + text
            os.write(fd, text.encode())
        finally:
            os.close(fd)


@register("middleware", "anonymize", AnonymizeConfig)
def build_anonymize(name: str, config: AnonymizeConfig) -> AnonymizeStage:
    return AnonymizeStage(name, config)
