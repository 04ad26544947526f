"""Located configuration problems: every one names its file and dotted key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class ConfigIssue:
    """One problem found in a configuration.

    ``location`` is the dotted key path (``pipelines.default.middleware[0].match``),
    empty for a problem with the file as a whole. ``severity`` is ``"error"`` or
    ``"warning"``; only errors make a configuration invalid.
    """

    file: str
    location: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}" if self.location else self.file
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{where}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used, with every issue found in it.

    ``partial``, when the schema tier got that far, is the configuration made of the
    components that did validate, and ``defined`` the names of every component defined
    (``{"backends": {...}, ...}``), valid or not: enough to check references while
    schema errors stand.
    """

    def __init__(self, issues: list[ConfigIssue], partial=None, defined: dict[str, set[str]] | None = None):
        self.issues = sorted(issues, key=lambda i: (i.severity != "error", i.file, i.location))
        self.partial = partial
        self.defined = defined
        super().__init__("\n".join(str(i) for i in self.errors))

    @property
    def errors(self) -> list[ConfigIssue]:
        return [i for i in self.issues if i.severity == "error"]


def display_path(path: Path | str | None) -> str:
    """The name a file is reported under: relative to the working directory when possible."""
    if path is None:
        return "<embedded default>"
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def dotted(parts: tuple | list) -> str:
    """Render a pydantic-style location tuple as ``a.b[0].c``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
