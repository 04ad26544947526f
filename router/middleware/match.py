"""The match language shared by every stage that selects requests.

A match is a table of ``key = condition``; every key must hold (AND). Keys are DICOM
keywords (``Modality``), tags (``"(0008,0060)"`` or ``"00080060"``) or envelope fields
(``calling_aet``, ``called_aet``, ``peer_address``, ``endpoint``, ``sop_class``).

Conditions:
- a string: exact, or a glob when it holds ``*``, ``?`` or ``[`` (case-sensitive);
- a number: numerically equal;
- an array: any of its members matches;
- ``{ regex = "^CT|MR$" }``: a Python regular expression found in the value (``re.search``);
- ``{ min = 10, max = 20 }``: an inclusive numeric range (either bound may be left out);
- ``{ min = "2024-01-01", max = "20241231" }``: an inclusive date range; a DA value is
  compared as a date, a DT value by its date part;
- ``{ exists = true }`` / ``{ exists = false }`` / ``{ absent = true }``: presence;
- ``{ not = condition }``: the condition does not match.

Operators in one table must all hold (``{ min = 1, regex = "5$" }``). For a peer address
a string may also be a CIDR network (``"10.0.0.0/8"``). A multi-valued attribute matches
when any of its values matches; an attribute that is present but empty has the value "".
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword

from router.envelope import RequestEnvelope

ENVELOPE_FIELDS: dict[str, Callable[[RequestEnvelope], str | None]] = {
    "calling_aet": lambda e: e.association.calling_aet,
    "called_aet": lambda e: e.association.called_aet,
    "peer_address": lambda e: e.association.peer_host,
    "endpoint": lambda e: e.association.endpoint,
    "sop_class": lambda e: e.command.sop_class_uid,
}

OPERATORS = ("not", "regex", "min", "max", "exists", "absent")

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_DATE_RE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})")

# A predicate sees the values of one key (None: the key is absent) and answers.
Predicate = Callable[[list[Any] | None], bool]


class MatchError(ValueError):
    pass


def parse_tag(key: str) -> int | None:
    """The tag a match key names, or None for an envelope field; raises MatchError."""
    if key in ENVELOPE_FIELDS:
        return None
    m = _TAG_RE.match(key)
    if m:
        return int(m.group(1) + m.group(2), 16)
    tag = tag_for_keyword(key)
    if tag is None:
        fields = ", ".join(ENVELOPE_FIELDS)
        raise MatchError(f"{key!r} is not a DICOM keyword, a (gggg,eeee) tag or an envelope field ({fields})")
    return tag


def compile_condition(condition: Any, *, is_address: bool = False) -> Predicate:
    """A predicate for one condition of the match language; raises MatchError."""
    if isinstance(condition, bool):
        raise MatchError("true/false is not a condition; use a string, number, array or an operator table")
    if isinstance(condition, (str, int, float)):
        test = _value_test(condition, is_address)
        return lambda values: any(test(v) for v in values or ())
    if isinstance(condition, list):
        if not condition:
            raise MatchError("an empty array matches nothing")
        if any(isinstance(member, (list, dict, bool)) for member in condition):
            raise MatchError("array members must be strings or numbers")
        tests = [_value_test(member, is_address) for member in condition]
        return lambda values: any(t(v) for v in values or () for t in tests)
    if isinstance(condition, dict):
        return _compile_operators(condition, is_address)
    raise MatchError(f"unsupported condition {condition!r}")


def _compile_operators(table: dict[str, Any], is_address: bool) -> Predicate:
    unknown = sorted(set(table) - set(OPERATORS))
    if unknown:
        raise MatchError(f"unknown operator(s) {unknown}; supported: {', '.join(OPERATORS)}")
    if not table:
        raise MatchError("an empty operator table matches everything; leave the key out instead")
    predicates: list[Predicate] = []
    if "not" in table:
        inner = compile_condition(table["not"], is_address=is_address)
        predicates.append(lambda values: not inner(values))
    if "regex" in table:
        predicates.append(_regex_predicate(table["regex"]))
    if "min" in table or "max" in table:
        predicates.append(_range_predicate(table.get("min"), table.get("max")))
    for name, wanted in (("exists", True), ("absent", False)):
        if name in table:
            flag = table[name]
            if not isinstance(flag, bool):
                raise MatchError(f"{name} takes true or false, not {flag!r}")
            predicates.append(_presence(flag if wanted else not flag))
    return lambda values: all(p(values) for p in predicates)


def _presence(present: bool) -> Predicate:
    return lambda values: (values is not None) is present


def _regex_predicate(pattern: Any) -> Predicate:
    if not isinstance(pattern, str):
        raise MatchError(f"regex takes a string, not {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise MatchError(f"invalid regex {pattern!r}: {exc}") from None
    return lambda values: any(compiled.search(_text(v)) for v in values or ())


def _range_predicate(low: Any, high: Any) -> Predicate:
    bounds = [b for b in (low, high) if b is not None]
    if all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        lo = float("-inf") if low is None else float(low)
        hi = float("inf") if high is None else float(high)
        return lambda values: any(lo <= n <= hi for n in map(_number, values or ()) if n is not None)
    if all(isinstance(b, (str, dt.date)) for b in bounds):
        lo_d = _date(low) if low is not None else dt.date.min
        hi_d = _date(high) if high is not None else dt.date.max
        if lo_d is None or hi_d is None:
            raise MatchError(f"date range bounds must be YYYYMMDD or YYYY-MM-DD, not {low!r} / {high!r}")
        return lambda values: any(lo_d <= d <= hi_d for d in map(_date, values or ()) if d is not None)
    raise MatchError(f"min/max must both be numbers or both be dates, not {low!r} / {high!r}")


def _value_test(condition: str | int | float, is_address: bool) -> Callable[[Any], bool]:
    if isinstance(condition, (int, float)):
        wanted = float(condition)
        return lambda v: _number(v) == wanted
    if is_address and "/" in condition:
        try:
            network = ipaddress.ip_network(condition, strict=False)
        except ValueError as exc:
            raise MatchError(f"invalid network {condition!r}: {exc}") from None
        return lambda v: _in_network(_text(v), network)
    if any(ch in condition for ch in "*?["):
        return lambda v: fnmatch.fnmatchcase(_text(v), condition)
    return lambda v: _text(v) == condition


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    m = _DATE_RE.match(_text(value).strip())
    if not m:
        return None
    try:
        return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def _in_network(text: str, network) -> bool:
    try:
        return ipaddress.ip_address(text) in network
    except ValueError:
        return False


@dataclass(frozen=True)
class Matcher:
    """A compiled match table; call it with an envelope."""

    table: dict[str, Any]
    clauses: tuple[tuple[str, int | None, Predicate], ...]

    @classmethod
    def compile(cls, table: dict[str, Any]) -> Matcher:
        clauses = []
        for key, condition in table.items():
            tag = parse_tag(key)
            try:
                predicate = compile_condition(condition, is_address=key == "peer_address")
            except MatchError as exc:
                raise MatchError(f"{key}: {exc}") from None
            clauses.append((key, tag, predicate))
        return cls(dict(table), tuple(clauses))

    @property
    def needs_header(self) -> bool:
        return any(tag is not None for _, tag, _ in self.clauses)

    def __call__(self, envelope: RequestEnvelope) -> bool:
        return all(predicate(_values(envelope, key, tag)) for key, tag, predicate in self.clauses)


def _values(envelope: RequestEnvelope, key: str, tag: int | None) -> list[Any] | None:
    if tag is None:
        value = ENVELOPE_FIELDS[key](envelope)
        return None if value is None else [value]
    dataset = envelope.dataset
    if dataset is None or tag not in dataset:
        return None
    value = dataset[tag].value
    if value is None or value == "":
        return [""]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def validate_match(value: dict[str, Any]) -> dict[str, Any]:
    """A pydantic validator body: compile the table, raising ValueError with the reason."""
    try:
        Matcher.compile(value)
    except MatchError as exc:
        raise ValueError(str(exc)) from None
    return value
