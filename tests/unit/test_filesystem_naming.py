"""No attribute value can make the filesystem backend write outside its directory."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from router.backends.filesystem import FilesystemBackend, FilesystemBackendConfig, safe_component


@pytest.mark.parametrize(
    "value,expected",
    [
        ("P001", "P001"),
        ("../../etc", "_.._etc"),
        ("..", "UNKNOWN"),
        ("/abs/path", "_abs_path"),
        ("a\\b", "a_b"),
        ("DOE^JOHN", "DOE_JOHN"),
        ("", "UNKNOWN"),
        (None, "UNKNOWN"),
        ("x" * 100, "x" * 64),
        ("name\x00evil", "name_evil"),
        ("1.2.840.1", "1.2.840.1"),
    ],
)
def test_safe_component(value, expected):
    assert safe_component(value) == expected


@pytest.mark.parametrize("hostile", ["../../../etc/passwd", "/etc/passwd", "..", ".", "a/../../b"])
def test_hostile_values_stay_inside(tmp_path, hostile):
    backend = FilesystemBackend("fs", FilesystemBackendConfig(path=tmp_path / "root", template="{PatientID}/{SOPInstanceUID}.dcm"))
    ds = Dataset()
    ds.PatientID = hostile
    ds.SOPInstanceUID = hostile
    target = backend.target_for(ds)
    assert (tmp_path / "root").resolve() in target.parents


@pytest.mark.parametrize("template", ["../{PatientID}", "/abs/{PatientID}", "{Bogus}.dcm", "{PatientID!r}"])
def test_bad_templates_are_config_errors(tmp_path, template):
    with pytest.raises(ValidationError):
        FilesystemBackendConfig(path=tmp_path, template=template)
