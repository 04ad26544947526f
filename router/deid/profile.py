"""The PS3.15 Annex E profile: which action each attribute gets under a set of options.

The facts of the standard live in ``annex_e.txt`` beside this module. :func:`resolve`
turns them into the one action the router applies, with the reason:

- an option's action wins over the Basic Profile's; when several selected options name
  the attribute, K (keep) wins over C (clean);
- a Basic Profile choice is made without knowing the IOD's attribute types, towards the
  choice that keeps every IOD valid: ``X/Z`` and ``X/Z/D`` and ``Z/D`` become Z (emptied,
  which suits Type 2 and 3 attributes; a sequence is removed instead, since an empty
  Type 3 sequence is invalid), ``X/D`` becomes D (a dummy value, which suits Type 1), and
  ``X/Z/U*`` becomes U* (the sequence is kept and its items de-identified, so the UIDs
  it references are remapped like the instances they name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

OPTIONS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)

BASIC_CHOICES = {"X/Z": "Z", "X/Z/D": "Z", "Z/D": "Z", "X/D": "D", "X/Z/U*": "U*"}
ACTIONS = {
    "D": "replace with a dummy value",
    "Z": "replace with an empty value",
    "X": "remove",
    "K": "keep",
    "C": "clean",
    "U": "replace the UID with a keyed one",
    "U*": "keep the sequence, de-identify its items (referenced UIDs remapped)",
}
TABLE_FILE = Path(__file__).with_name("annex_e.txt")
_LINE = re.compile(r"^(\S+)\s+(\S+)\s+([YN])\s+(.*?)\s*\|\s*(\S+)\s*\|\s*(.+)$")


@dataclass(frozen=True)
class Row:
    """One attribute of Table E.1-1."""

    pattern: str  # "0008,0050", "50xx,xxxx" or "private"
    basic: str
    in_std_iod: bool
    options: dict[str, str]
    keyword: str | None
    name: str

    @property
    def tag(self) -> int | None:
        """The tag, or None for a repeating-group pattern or the private row."""
        if self.pattern == "private" or "x" in self.pattern:
            return None
        return int(self.pattern.replace(",", ""), 16)

    def matches(self, tag: int) -> bool:
        if self.pattern == "private":
            return bool(tag >> 16 & 1)
        text = f"{tag >> 16:04X},{tag & 0xFFFF:04X}"
        return all(p in ("x", t) for p, t in zip(self.pattern.upper().replace("X", "x"), text, strict=False))


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str  # "basic profile", "basic profile (X/Z)" or the option name
    removable: bool = False  # the standard allows X: a sequence is then removed rather than emptied


@lru_cache(maxsize=1)
def table() -> tuple[Row, ...]:
    rows = []
    for number, line in enumerate(TABLE_FILE.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{TABLE_FILE}:{number}: not a table row: {line!r}")
        pattern, basic, iod, options, keyword, name = m.groups()
        opts = dict(o.split("=", 1) for o in options.split()) if options != "-" else {}
        unknown = set(opts) - set(OPTIONS)
        if unknown:
            raise ValueError(f"{TABLE_FILE}:{number}: unknown option(s) {sorted(unknown)}")
        rows.append(Row(pattern, basic, iod == "Y", opts, None if keyword == "-" else keyword, name))
    return tuple(rows)


MAX_DECIDED = 65536  # distinct public tags remembered; a flood of odd tags is decided afresh


@dataclass(frozen=True)
class Profile:
    """The resolved profile for one set of options: tag -> :class:`Decision`."""

    options: frozenset[str]
    exact: dict[int, tuple[Row, Decision]]
    patterns: tuple[tuple[Row, Decision], ...]

    _decided: dict[int, tuple[Row, Decision] | None] = field(default_factory=dict, compare=False, repr=False)

    def decide(self, tag: int) -> tuple[Row, Decision] | None:
        """The row and decision for ``tag``, None when the profile does not name it (kept).

        Decided once per tag for the life of the profile (the plan keyed by tag that the
        patterns resolve to, filled as tags are met)."""
        try:
            return self._decided[tag]
        except KeyError:
            pass
        hit = self.exact.get(tag)
        if hit is None:
            hit = next(
                ((row, decision) for row, decision in self.patterns if row.pattern != "private" and row.matches(tag)),
                None,
            )
        if len(self._decided) < MAX_DECIDED:
            self._decided[tag] = hit
        return hit

    def private_decision(self) -> Decision:
        for row, decision in self.patterns:
            if row.pattern == "private":
                return decision
        return Decision("X", "basic profile")

    def rows(self) -> list[tuple[Row, Decision]]:
        return sorted(list(self.exact.values()) + list(self.patterns), key=lambda rd: rd[0].pattern)


def resolve(options: frozenset[str] | set[str] | tuple[str, ...]) -> Profile:
    options = frozenset(options)
    unknown = options - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {', '.join(OPTIONS)}")
    if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= options:
        raise ValueError("retain_longitudinal_full_dates and retain_longitudinal_modified_dates exclude each other")
    exact, patterns = {}, []
    for row in table():
        decision = decide_row(row, options)
        if row.tag is None:
            patterns.append((row, decision))
        else:
            exact[row.tag] = (row, decision)
    return Profile(options, exact, tuple(patterns))


def decide_row(row: Row, options: frozenset[str]) -> Decision:
    chosen = [(name, action) for name, action in row.options.items() if name in options]
    for wanted in ("K", "C"):
        for name, action in chosen:
            if action == wanted:
                return Decision(action, name)
    if row.basic in BASIC_CHOICES:
        return Decision(BASIC_CHOICES[row.basic], f"basic profile ({row.basic})", row.basic.startswith("X/"))
    return Decision(row.basic, "basic profile")
