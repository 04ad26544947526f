"""The README's references hold: every example it names exists, every TOML block in it parses."""

from __future__ import annotations

import re
import sys

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

README = (ROOT / "README.md").read_text()


def test_every_example_the_readme_names_exists():
    named = set(re.findall(r"examples/([a-z0-9-]+)", README))
    assert named, "the README names no example"
    missing = sorted(
        name
        for name in named
        if not (ROOT / "examples" / name / "router.toml").exists() and not (ROOT / "examples" / name).is_dir()
    )
    assert not missing


def test_every_toml_block_in_the_readme_parses():
    blocks = re.findall(r"```toml\n(.*?)```", README, re.DOTALL)
    assert blocks
    for block in blocks:
        tomllib.loads(block)
