"""Writing out an edited version kept by reference: header, then the received file's range."""

from __future__ import annotations

import pytest

from router.spool.edited_copies import edited_copy_path, is_edited_copy, write_edited_copy
from router.spool.queue import EditedByReference
from router.spool.variants import variant_base

HEADER = b"\0" * 128 + b"DICM" + b"the edited header"
PIXELS = bytes(range(256)) * 1024


@pytest.fixture
def received(tmp_path):
    path = tmp_path / "ab12.dcm"
    path.write_bytes(b"the received header" + PIXELS)
    return path


def edited(received) -> EditedByReference:
    return EditedByReference(HEADER, str(received), len(b"the received header"), received.stat().st_size, None)


def test_the_copy_is_the_header_then_the_received_pixel_data(received):
    copy = edited_copy_path(received, 0)
    write_edited_copy(copy, edited(received), len(HEADER) + len(PIXELS))
    assert open(copy, "rb").read() == HEADER + PIXELS
    assert [p.name for p in received.parent.iterdir() if p.name.endswith(".part")] == []


def test_with_no_size_recorded_a_missing_copy_is_written_and_one_there_kept(received):
    copy = edited_copy_path(received, 0)
    write_edited_copy(copy, edited(received), None)
    assert open(copy, "rb").read() == HEADER + PIXELS
    with open(copy, "wb") as f:
        f.write(b"left as it is")
    write_edited_copy(copy, edited(received), None)
    assert open(copy, "rb").read() == b"left as it is"


def test_a_received_file_shorter_than_recorded_leaves_no_copy(received):
    version = edited(received)
    with open(received, "r+b") as f:
        f.truncate(1000)
    copy = edited_copy_path(received, 0)
    with pytest.raises(ValueError):
        write_edited_copy(copy, version, len(HEADER) + len(PIXELS))
    assert sorted(p.name for p in received.parent.iterdir()) == [received.name]


def test_a_copy_of_the_recorded_size_is_sent_as_it_is_one_of_another_size_written_again(received):
    copy = edited_copy_path(received, 0)
    size = len(HEADER) + len(PIXELS)
    with open(copy, "wb") as f:
        f.write(b"x" * size)
    write_edited_copy(copy, edited(received), size)
    assert open(copy, "rb").read() == b"x" * size
    with open(copy, "wb") as f:
        f.write(b"cut short")
    write_edited_copy(copy, edited(received), size)
    assert open(copy, "rb").read() == HEADER + PIXELS


def test_copies_and_their_transcoded_versions_are_told_apart_by_name():
    assert is_edited_copy("ab12.dcm.edit0.dcm") and is_edited_copy("ab12.dcm.edit17.dcm")
    assert not is_edited_copy("ab12.dcm") and not is_edited_copy("ab12.dcm.edit0.dcm.1.2.840.10008.1.2.4.80")
    assert variant_base("ab12.dcm.edit0.dcm.1.2.840.10008.1.2.4.80") == "ab12.dcm.edit0.dcm"
    assert variant_base("ab12.dcm.1.2.840.10008.1.2.1") == "ab12.dcm"
