"""Every config fixture's problems, with their exact messages, in the order check prints them."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
CASES = sorted(p.stem for p in FIXTURES.glob("*.expected"))


@pytest.mark.parametrize("name", CASES)
def test_fixture_reports_exact_errors(name, monkeypatch):
    monkeypatch.chdir(FIXTURES)
    _, issues = validate(Path(f"{name}.toml"), through="references")
    expected = (FIXTURES / f"{name}.expected").read_text().splitlines()
    assert sorted(str(i) for i in issues) == sorted(expected)


def test_all_errors_are_reported_at_once(monkeypatch):
    monkeypatch.chdir(FIXTURES)
    _, issues = validate(Path("bad-values.toml"))
    assert len([i for i in issues if i.severity == "error"]) == 8


def test_missing_file_is_located(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, issues = validate(Path("nope.toml"))
    assert [str(i) for i in issues] == ["nope.toml: cannot read: No such file or directory"]
