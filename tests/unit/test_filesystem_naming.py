"""No attribute value can make the filesystem backend write outside its directory."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from router.backends.filesystem import (
    FilesystemBackend,
    FilesystemBackendConfig,
    safe_component,
)


@pytest.mark.parametrize(
    "value,readable",
    [
        ("P001", "P001"),
        ("1.2.840.1", "1.2.840.1"),
        ("", "UNKNOWN"),
        (None, "UNKNOWN"),
        ("../../etc", "_.._etc~"),
        ("..", "UNKNOWN~"),
        ("/abs/path", "_abs_path~"),
        ("a\\b", "a_b~"),
        ("DOE^JOHN", "DOE_JOHN~"),
        ("x" * 100, "x" * 64 + "~"),
        ("name\x00evil", "name_evil~"),
    ],
)
def test_safe_component(value, readable):
    """Values kept as they are stand alone; changed ones carry ``~`` and 16 hex digits of their hash."""
    name = safe_component(value)
    if readable.endswith("~"):
        assert name.startswith(readable) and re.fullmatch(r"[0-9a-f]{16}", name[len(readable) :])
    else:
        assert name == readable


def test_distinct_values_never_share_a_name():
    """The values that used to become one file: ``7/7``, ``7_7``, ``7 7``, and long UIDs alike in
    their first 64 characters."""
    prefix = "1.2.826.0.1.3680043.8.498." + "1" * 38
    values = ["1.2.3.7/7", "1.2.3.7_7", "1.2.3.7 7", prefix + "1", prefix + "2", "1.2.3.7~7", ".1.2", "1.2"]
    names = [safe_component(v) for v in values]
    assert len(set(names)) == len(values)


@pytest.mark.parametrize("hostile", ["../../../etc/passwd", "/etc/passwd", "..", ".", "a/../../b"])
def test_hostile_values_stay_inside(tmp_path, hostile):
    backend = FilesystemBackend(
        "fs", FilesystemBackendConfig(path=tmp_path / "root", template="{PatientID}/{SOPInstanceUID}.dcm")
    )
    ds = Dataset()
    ds.PatientID = hostile
    ds.SOPInstanceUID = hostile
    target = backend.target_for(ds)
    assert (tmp_path / "root").resolve() in target.parents


@pytest.mark.parametrize("template", ["../{PatientID}", "/abs/{PatientID}", "{Bogus}.dcm", "{PatientID!r}"])
def test_bad_templates_are_config_errors(tmp_path, template):
    with pytest.raises(ValidationError):
        FilesystemBackendConfig(path=tmp_path, template=template)


def _delivery(path, uid: str):
    from router.spool.queue import Delivery

    return Delivery(
        id=1,
        instance_id=1,
        backend="fs",
        pipeline="p",
        attempts=0,
        queued_at=0.0,
        path=str(path),
        sop_instance_uid=uid,
        sop_class_uid=None,
        transfer_syntax=None,
        calling_aet=None,
        association_id=None,
    )


def test_a_file_holding_another_instance_is_never_overwritten(tmp_path):
    """A template that names two instances alike: the second delivery fails (and is quarantined
    for it) instead of replacing the first; a newer version of the same instance replaces it."""
    from router.backends.status import Outcome
    from tests.support.dicomgen import write_series

    first, second = write_series(tmp_path / "src", 2, "small", patient="SAME")
    backend = FilesystemBackend("fs", FilesystemBackendConfig(path=tmp_path / "out", template="{PatientID}.dcm"))
    assert backend.deliver(_delivery(first, "a")).outcome is Outcome.SUCCESS
    kept = (tmp_path / "out" / "SAME.dcm").read_bytes()
    result = backend.deliver(_delivery(second, "b"))
    assert result.outcome is Outcome.PERMANENT and "already holds another instance" in result.reason
    assert (tmp_path / "out" / "SAME.dcm").read_bytes() == kept
    assert backend.deliver(_delivery(first, "a")).outcome is Outcome.SUCCESS  # the same instance again
