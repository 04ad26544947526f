"""The declared seam to pynetdicom (router/engine/seam.py, router/engine/changes.py).

Each check runs in a fresh interpreter: fingerprints are taken before any change is
applied, and a process applies its changes once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from router.engine.changes import CHANGES, OWN_CLASSES

FIXES = [c.name for c in CHANGES if c.kind == "fix"]
ROUTER_SUBCLASSED = {
    "DULServiceProvider",
    "Association",
    "AssociationSocket",
    "DIMSEServiceProvider",
    "ACSE",
    "fsm",
    "RequestHandler",
    "StateMachine",
}


def run_fresh(code: str, env_mode: str | None = None) -> tuple[dict, list[dict]]:
    """Run ``code`` (which must set ``result``) in a new interpreter with JSON logging; its result and log lines."""
    program = (
        textwrap.dedent("""
        import json, sys
        from router.observe.logging import setup_logging
        setup_logging("info", "json")
        result = None
    """)
        + textwrap.dedent(code)
        + "\nprint(json.dumps(result))\n"
    )
    env = None
    if env_mode is not None:
        import os

        env = {**os.environ, "DICOM_ROUTER_ENGINE": env_mode}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return json.loads(done.stdout.strip().splitlines()[-1]), lines


def test_every_declared_fingerprint_matches_the_installed_pynetdicom():
    result, _ = run_fresh("""
        import pynetdicom
        from router.engine.changes import CHANGES, OWN_CLASSES
        from router.engine.seam import fingerprint
        result = {"version": pynetdicom.__version__,
                  "drifted": {c.name: fingerprint(c.replaces) for c in CHANGES if fingerprint(c.replaces) != c.fingerprint}}
    """)
    assert result["drifted"] == {}, (
        f"pynetdicom {result['version']} changed the code under these changes; re-read each against the new "
        f"source, then update its fingerprint: {result['drifted']}"
    )


def test_every_change_is_declared_once_with_its_reason_and_known_prerequisites():
    names = [c.name for c in CHANGES]
    assert len(names) == len(set(names))
    for position, change in enumerate(CHANGES):
        assert change.why and change.replaces and change.kind in ("fix", "speed")
        assert all(r in names[:position] for r in change.requires), change.name
        on_classes = any(t.split(".")[-2] in ROUTER_SUBCLASSED for t in change.replaces)
        assert change.name == OWN_CLASSES or on_classes == (OWN_CLASSES in change.requires), change.name
    assert not any(CHANGES[names.index(r)].kind == "speed" for c in CHANGES if c.kind == "fix" for r in c.requires), (
        "a fix must not need a speed change: fixes apply in every mode"
    )


def test_owned_mode_applies_every_change():
    result, lines = run_fresh("""
        from router import engine
        report = engine.configure("owned")
        result = {"applied": report.applied, "left_out": report.left_out}
    """)
    assert result["applied"] == [c.name for c in CHANGES] and result["left_out"] == {}
    assert not [line for line in lines if line["level"] != "debug"], "nothing to tell an operator"


def test_stock_mode_applies_the_fixes_only_and_the_environment_chooses_it():
    result, lines = run_fresh(
        """
        from router import engine
        report = engine.configure()
        result = {"applied": report.applied, "left_out": report.left_out}
    """,
        env_mode="stock",
    )
    assert result["applied"] == FIXES
    assert set(result["left_out"]) == {c.name for c in CHANGES if c.kind == "speed"}
    assert not [line for line in lines if line["event"] == "pynetdicom change not applied"]
    [told] = [line for line in lines if line["event"] == "pynetdicom engine"]
    assert told["mode"] == "stock" and told["level"] == "info" and told["changes_applied"] == len(FIXES)


@pytest.mark.parametrize("mode", ["owned", "stock"])
def test_a_change_whose_pynetdicom_code_differs_is_left_out_with_one_line_and_the_rest_apply(mode):
    result, lines = run_fresh(f"""
        import dataclasses
        from router import engine
        from router.engine import changes
        changes.CHANGES = tuple(dataclasses.replace(c, fingerprint="0" * 16) if c.name == "bounded outgoing PDU queue"
                                else c for c in changes.CHANGES)
        from pynetdicom.dul import DULServiceProvider
        from router.engine.classes import RouterDUL
        report = engine.configure({mode!r})
        result = {{"applied": report.applied, "left_out": report.left_out,
                  "send_pdu_untouched": RouterDUL.send_pdu is DULServiceProvider.send_pdu}}
    """)
    assert "bounded outgoing PDU queue" in result["left_out"] and result["send_pdu_untouched"]
    expected = [
        c.name for c in CHANGES if (mode == "owned" or c.kind == "fix") and c.name != "bounded outgoing PDU queue"
    ]
    assert result["applied"] == expected
    warned = [line for line in lines if line["event"] == "pynetdicom change not applied"]
    assert len(warned) == 1 and warned[0]["change"] == "bounded outgoing PDU queue"
    assert "pynetdicom.dul.DULServiceProvider.send_pdu" in warned[0]["replaces"]
    assert "fingerprint" in warned[0]["reason"] and warned[0]["level"] == "warning"


def test_a_left_out_speed_change_leaves_out_the_ones_built_on_it():
    result, lines = run_fresh("""
        import dataclasses
        from router import engine
        from router.engine import changes
        changes.CHANGES = tuple(dataclasses.replace(c, fingerprint="0" * 16) if c.name == "event-driven reactors"
                                else c for c in changes.CHANGES)
        report = engine.configure("owned")
        result = {"applied": report.applied, "left_out": report.left_out}
    """)
    dependants = {c.name for c in CHANGES if "event-driven reactors" in c.requires}
    assert dependants and dependants <= set(result["left_out"])
    assert all("needs event-driven reactors" in result["left_out"][name] for name in dependants)
    assert set(FIXES) <= set(result["applied"])


def test_without_the_routers_own_classes_every_change_to_a_class_is_left_out_and_storage_stays_open():
    result, lines = run_fresh("""
        import dataclasses
        from router import engine
        from router.engine import changes
        from pynetdicom import _config
        changes.CHANGES = tuple(dataclasses.replace(c, fingerprint="0" * 16) if c.name == changes.OWN_CLASSES
                                else c for c in changes.CHANGES)
        report = engine.configure("owned")
        result = {"applied": report.applied, "left_out": report.left_out,
                  "unrestricted": _config.UNRESTRICTED_STORAGE_SERVICE}
    """)
    dependants = {c.name for c in CHANGES if OWN_CLASSES in c.requires}
    assert set(result["left_out"]) == dependants | {OWN_CLASSES}
    assert all(f"needs {OWN_CLASSES}" in result["left_out"][name] for name in dependants)
    assert result["applied"] == [c.name for c in CHANGES if c.name not in result["left_out"]]
    assert (
        result["unrestricted"] is True
    )  # the router's AEs, now pynetdicom's own classes, still take any storage class
    assert [line["change"] for line in lines if line["event"] == "pynetdicom change not applied"][0] == OWN_CLASSES


def test_a_target_missing_from_pynetdicom_leaves_the_change_out_instead_of_failing():
    result, _ = run_fresh("""
        import dataclasses
        from router import engine
        from router.engine import changes
        changes.CHANGES = tuple(dataclasses.replace(c, replaces=("pynetdicom.dul.DULServiceProvider.no_such_method",))
                                if c.name == "no unhandled socket thread" else c for c in changes.CHANGES)
        report = engine.configure("owned")
        result = {"left_out": report.left_out}
    """)
    assert list(result["left_out"]) == ["no unhandled socket thread"]


def test_the_engine_docs_name_every_change():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "engine.md").read_text()
    assert [c.name for c in CHANGES if f"| {c.name} |" not in text] == []
