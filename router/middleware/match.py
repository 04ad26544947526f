"""The match language shared by every stage that selects requests.

A match is a table of ``key = condition``; every key must hold (AND). Keys are DICOM
keywords (``Modality``), tags (``"(0008,0060)"`` or ``"00080060"``) or envelope fields
(``calling_aet``, ``called_aet``, ``peer_address``, ``endpoint``, ``sop_class``).

Conditions:
- a string: exact, or a glob when it holds ``*``, ``?`` or ``[``;
- a number: equal to the value;
- an array: any of its members matches;
- ``{ not = condition }``: the condition does not match.

For a peer address a condition may also be a CIDR network (``"10.0.0.0/8"``).
A multi-valued attribute matches when any of its values matches.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

from pydicom.datadict import tag_for_keyword

from router.envelope import RequestEnvelope

ENVELOPE_FIELDS: dict[str, Callable[[RequestEnvelope], str | None]] = {
    "calling_aet": lambda e: e.association.calling_aet,
    "called_aet": lambda e: e.association.called_aet,
    "peer_address": lambda e: e.association.peer_host,
    "endpoint": lambda e: e.association.endpoint,
    "sop_class": lambda e: e.command.sop_class_uid,
}

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


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


def check_condition(condition: Any) -> None:
    """Raise MatchError when a condition is not of the match language."""
    if isinstance(condition, bool):
        raise MatchError("true/false is not a condition; use a string, number, array or { not = ... }")
    if isinstance(condition, (str, int, float)):
        return
    if isinstance(condition, list):
        if not condition:
            raise MatchError("an empty array matches nothing")
        for member in condition:
            if isinstance(member, (list, dict)):
                raise MatchError("array members must be strings or numbers")
            check_condition(member)
        return
    if isinstance(condition, dict):
        if set(condition) != {"not"}:
            raise MatchError(f"unknown operator(s) {sorted(set(condition) - {'not'})}; supported: not")
        check_condition(condition["not"])
        return
    raise MatchError(f"unsupported condition {condition!r}")


@dataclass(frozen=True)
class Matcher:
    """A compiled match table; call it with an envelope."""

    clauses: tuple[tuple[str, int | None, Any], ...]

    @classmethod
    def compile(cls, table: dict[str, Any]) -> "Matcher":
        clauses = []
        for key, condition in table.items():
            clauses.append((key, parse_tag(key), condition))
            check_condition(condition)
        return cls(tuple(clauses))

    @property
    def needs_header(self) -> bool:
        return any(tag is not None for _, tag, _ in self.clauses)

    def __call__(self, envelope: RequestEnvelope) -> bool:
        return all(self._clause(envelope, key, tag, cond) for key, tag, cond in self.clauses)

    def _clause(self, envelope: RequestEnvelope, key: str, tag: int | None, condition: Any) -> bool:
        if tag is None:
            values = [ENVELOPE_FIELDS[key](envelope)]
        else:
            values = _values(envelope, tag)
        return _clause_matches(condition, values, is_address=key == "peer_address")


def _clause_matches(condition: Any, values: list[Any], *, is_address: bool) -> bool:
    """Any value matches; a negation holds when no value matches (so also when absent)."""
    if isinstance(condition, dict):
        return not _clause_matches(condition["not"], values, is_address=is_address)
    return any(_matches(condition, v, is_address=is_address) for v in values)


def _values(envelope: RequestEnvelope, tag: int) -> list[Any]:
    dataset = envelope.identifier if envelope.instance is None else envelope.instance.header
    if dataset is None or tag not in dataset:
        return []
    value = dataset[tag].value
    if value is None or value == "":
        return [""]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [v for v in value]
    return [value]


def _matches(condition: Any, value: Any, *, is_address: bool = False) -> bool:
    if isinstance(condition, list):
        return any(_matches(c, value, is_address=is_address) for c in condition)
    if isinstance(condition, (int, float)):
        try:
            return float(value) == float(condition)
        except (TypeError, ValueError):
            return False
    text = "" if value is None else str(value)
    if is_address and "/" in condition:
        try:
            return ipaddress.ip_address(text) in ipaddress.ip_network(condition, strict=False)
        except ValueError:
            return False
    if any(ch in condition for ch in "*?["):
        return fnmatch.fnmatchcase(text, condition)
    return text == condition
