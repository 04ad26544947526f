"""CSV lookup tables for ``coerce`` (``map``) and ``anonymize`` (pseudonyms).

The first row names the columns; keys are compared after trimming spaces. A table is
read once, when the configuration is loaded, so an unreadable table is a config error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


class LookupError_(ValueError):
    pass


@dataclass(frozen=True)
class LookupTable:
    path: Path
    columns: tuple[str, ...]
    rows: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: Path, key_column: str | None = None, needs: tuple[str, ...] = ()) -> LookupTable:
        """Read ``path`` keyed by ``key_column`` (default: the first column)."""
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = tuple(c.strip() for c in reader.fieldnames or ())
                key_column = key_column or (columns[0] if columns else "")
                missing = [c for c in (key_column, *needs) if c not in columns]
                if missing:
                    raise LookupError_(f"{path}: no column(s) {missing}; the header row has {list(columns)}")
                rows: dict[str, dict[str, str]] = {}
                for number, row in enumerate(reader, start=2):
                    row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                    key = row.get(key_column, "")
                    if key in rows:
                        raise LookupError_(f"{path}:{number}: key {key!r} appears twice")
                    rows[key] = row
        except OSError as exc:
            raise LookupError_(f"cannot read lookup table {path}: {exc.strerror}") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise LookupError_(f"{path}: not a readable CSV file: {exc}") from None
        return cls(Path(path), columns, rows)

    def get(self, key: str, column: str) -> str | None:
        row = self.rows.get(key.strip())
        return None if row is None else row.get(column)
