"""``coerce``: rewrite header attributes (or a query identifier) with ordered operations.

```toml
[[pipelines.default.middleware]]
type = "coerce"
match = { calling_aet = "CT_*" }          # optional: the whole stage applies only on a match
operations = [
  { set = "InstitutionName", value = "General Hospital" },
  { set = "StationName", value = "{calling_aet}" },          # a template
  { delete = ["OtherPatientIDs", "(0009,xxxx)", "private"] },
  { copy = "PatientID", to = "OtherPatientIDs" },
  { replace = "AccessionNumber", pattern = "^ACC-", with = "" },
  { map = "InstitutionName", table = "institutions.csv", from_column = "old", to_column = "new" },
  { set = "PatientComments", value = "checked", match = { Modality = "MR" } },
]
```

Operations run in order on the header of the instance; each may carry its own
``match``. Only the header changes: the intake writes the new header followed by the
original pixel data bytes (:mod:`router.spool.splice`), so memory does not grow with
the instance. ``map`` leaves a value not found in the table as it is unless
``unmapped`` says ``empty``, ``delete`` or ``reject`` (answer the sender 0xA900-family
status ``reject_status``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from pydantic import Field, field_validator, model_validator

from router.config.models import MiddlewareConfig
from router.config.registry import register
from router.config.types import ConfigPath, StrictModel
from router.envelope import Reject, RequestEnvelope
from router.middleware.anonymize_stream import open_stream
from router.middleware.attributes import (
    AttributeSpecError,
    Selector,
    check_template,
    parse_attribute,
    render_template,
    set_attribute,
    text_value,
)
from router.middleware.coerce_stream import StreamedHeader
from router.middleware.match import Matcher, validate_match
from router.spool.element_stream import NotStreamable
from router.tables import LookupError_, LookupTable

log = structlog.get_logger("router.middleware")

VERBS = ("set", "delete", "copy", "replace", "map")
T = TypeVar("T")
_FIELDS = {"copy": "copy_"}


class CoerceOperation(StrictModel):
    """One operation: exactly one of ``set``, ``delete``, ``copy``, ``replace``, ``map``."""

    set: str | None = None
    value: str | int | float | list[str] | None = None
    vr: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    delete: list[str] | None = None
    copy_: str | None = Field(default=None, alias="copy")
    to: str | None = None
    replace: str | None = None
    pattern: str | None = None
    with_: str = Field(default="", alias="with")
    map: str | None = None
    table: ConfigPath | None = None
    from_column: str | None = None
    to_column: str | None = None
    unmapped: Literal["keep", "empty", "delete", "reject"] = "keep"
    reject_status: int = Field(default=0xA900, ge=1, le=0xFFFF)
    match: dict[str, Any] | None = None

    model_config = StrictModel.model_config | {"populate_by_name": True, "serialize_by_alias": True}

    _match_compiles = field_validator("match")(lambda v: v if v is None else validate_match(v))

    @model_validator(mode="after")
    def _one_verb(self) -> CoerceOperation:
        verbs = [v for v in VERBS if getattr(self, _FIELDS.get(v, v)) is not None]
        if len(verbs) != 1:
            raise ValueError(f"an operation has exactly one of {', '.join(VERBS)}; found {verbs or 'none'}")
        try:
            self._check(verbs[0])
        except (AttributeSpecError, LookupError_, re.error) as exc:
            raise ValueError(str(exc)) from None
        return self

    def _check(self, verb: str) -> None:
        if verb == "set":
            if self.value is None:
                raise AttributeSpecError("set needs a value")
            parse_attribute(_given(self.set))
            for text in self.value if isinstance(self.value, list) else [self.value]:
                if isinstance(text, str):
                    check_template(text)
        elif verb == "delete":
            if not self.delete:
                raise AttributeSpecError('delete needs at least one keyword, tag, group or "private"')
            for selector in self.delete:
                Selector.parse(selector)
        elif verb == "copy":
            if self.to is None:
                raise AttributeSpecError("copy needs to = the target attribute")
            parse_attribute(_given(self.copy_))
            parse_attribute(self.to)
        elif verb == "replace":
            if self.pattern is None:
                raise AttributeSpecError("replace needs a pattern (a regular expression)")
            parse_attribute(_given(self.replace))
            re.compile(self.pattern)
        elif verb == "map":
            if self.table is None:
                raise AttributeSpecError("map needs table = a CSV file")
            parse_attribute(_given(self.map))

    def lookup(self) -> LookupTable:
        needs = (self.to_column,) if self.to_column else ()
        table = LookupTable.load(Path(_given(self.table)), self.from_column, needs)
        if not self.to_column and len(table.columns) < 2:
            raise LookupError_(f"{self.table}: a map table needs at least two columns")
        return table


class CoerceConfig(MiddlewareConfig):
    type: Literal["coerce"] = "coerce"
    match: dict[str, Any] | None = None
    operations: list[CoerceOperation] = Field(min_length=1)

    def environment_problems(self) -> list[tuple[str, str, str]]:
        """A ``map`` table missing, unreadable or without the columns it needs."""
        problems = []
        for index, operation in enumerate(self.operations):
            if operation.table is not None and operation.map is not None:
                try:
                    operation.lookup()
                except (LookupError_, OSError) as exc:
                    problems.append((f"operations[{index}].table", str(exc), "error"))
        return problems

    _match_compiles = field_validator("match")(lambda v: v if v is None else validate_match(v))


class CoerceStage:
    edits_instances = True

    def __init__(self, name: str, config: CoerceConfig):
        self.name = name
        self.matcher = Matcher.compile(config.match) if config.match else None
        self.operations = [_build_operation(op) for op in config.operations]
        self.streamable = all(matcher is None for matcher, _ in self.operations)  # matching reads a data set

    def __call__(self, envelope: RequestEnvelope) -> RequestEnvelope | Reject:
        """Run the operations: on an instance as received, over its raw element stream
        (:mod:`router.middleware.coerce_stream`) when that covers it, else on its pydicom data
        set (a query identifier, an earlier stage's edit); both give the same bytes."""
        if self.matcher is not None and not self.matcher(envelope):
            return envelope
        if self.streamable and envelope.instance is not None and not envelope.instance.edited:
            try:
                return self._streamed(envelope)
            except NotStreamable:
                pass
            except Exception as exc:  # a defect of the stream way: the data set way still coerces
                log.warning(
                    "coerce over the element stream failed; the data set way takes the instance",
                    stage=self.name,
                    error=repr(exc),
                    **envelope.log_context(),
                )
        ds = envelope.editable_dataset()
        outcome = self._apply(envelope, ds, lambda: envelope.with_dataset(ds))
        if isinstance(outcome, Reject):
            return outcome
        return envelope.with_dataset(ds).with_audit(self.name, "coerce", outcome) if outcome else envelope

    def _streamed(self, envelope: RequestEnvelope) -> RequestEnvelope | Reject:
        assert envelope.instance is not None
        header = StreamedHeader(open_stream(envelope.instance.path))
        outcome = self._apply(envelope, header, lambda: envelope)  # streamable: no operation matches
        if isinstance(outcome, Reject):
            return outcome
        return envelope.with_encoded(header.encoded()).with_audit(self.name, "coerce", outcome) if outcome else envelope

    def _apply(self, envelope: RequestEnvelope, ds, matched_envelope) -> str | Reject:
        """Run the operations on ``ds``; what they changed, or the rejection."""
        changed: list[str] = []
        for index, (matcher, apply) in enumerate(self.operations):
            if matcher is not None and not matcher(matched_envelope()):
                continue
            outcome = apply(envelope, ds)
            if isinstance(outcome, Reject):
                return Reject(self.name, outcome.status, f"operations[{index}]: {outcome.reason}")
            if outcome:
                changed.append(f"operations[{index}]: {outcome}")
        return "; ".join(changed)


def _build_operation(op: CoerceOperation):
    matcher = Matcher.compile(op.match) if op.match else None
    if op.set is not None:
        tag, values = parse_attribute(op.set), op.value

        def apply(envelope, ds):
            value = values
            if isinstance(value, str):
                value = render_template(value, envelope, ds)
            elif isinstance(value, list):
                value = [render_template(v, envelope, ds) for v in value]
            set_attribute(ds, tag, value, op.vr)
            return f"set {op.set}"
    elif op.delete is not None:
        selectors = [Selector.parse(s) for s in op.delete]

        def apply(envelope, ds):
            removed = [t for s in selectors for t in s.delete_from(ds)]
            return f"deleted {len(removed)} attribute(s)" if removed else ""
    elif op.copy_ is not None:
        source, target = parse_attribute(op.copy_), parse_attribute(_given(op.to))

        def apply(envelope, ds):
            if source not in ds:
                return ""
            set_attribute(ds, target, text_value(ds, source))
            return f"copied {op.copy_} to {op.to}"
    elif op.replace is not None:
        tag, pattern = parse_attribute(op.replace), re.compile(_given(op.pattern))

        def apply(envelope, ds):
            old = text_value(ds, tag)
            if old is None:
                return ""
            new = pattern.sub(op.with_, old)
            if new == old:
                return ""
            set_attribute(ds, tag, new, ds[tag].VR)
            return f"replaced in {op.replace}"
    else:
        tag, table = parse_attribute(_given(op.map)), op.lookup()
        to_column = op.to_column or table.columns[1]

        def apply(envelope, ds):
            old = text_value(ds, tag)
            if old is None:
                return ""
            new = table.get(old, to_column)
            if new is not None:
                set_attribute(ds, tag, new, ds[tag].VR)
                return f"mapped {op.map}"
            if op.unmapped == "reject":
                return Reject("", op.reject_status, f"{op.map} value {old!r} is not in {table.path.name}")
            if op.unmapped == "empty":
                set_attribute(ds, tag, "", ds[tag].VR)
                return f"emptied unmapped {op.map}"
            if op.unmapped == "delete":
                del ds[tag]
                return f"deleted unmapped {op.map}"
            return ""

    return matcher, apply


@register("middleware", "coerce", CoerceConfig)
def build_coerce(name: str, config: CoerceConfig) -> CoerceStage:
    return CoerceStage(name, config)


def _given(value: T | None) -> T:
    """An option the operation's verb requires (its validator has made sure it is there)."""
    if value is None:
        raise AttributeSpecError("a required option of the operation is missing")
    return value
