"""The transfer syntax a WADO-RS Accept header asks for, and what a frames request asks for."""

from __future__ import annotations

import pytest

from router.endpoints.dicomweb.accept import AS_STORED, NotAcceptable, requested_syntax

J2K = "1.2.840.10008.1.2.4.90"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, AS_STORED),
        ("*/*", AS_STORED),
        ('multipart/related; type="application/dicom"', AS_STORED),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', AS_STORED),
        (f'multipart/related; type="application/dicom"; transfer-syntax={J2K}', J2K),
        (f'multipart/related; type="application/dicom"; transfer-syntax="{J2K}"', J2K),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.57, '
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K}',
            J2K,
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0.5, '
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K}',
            J2K,
        ),
    ],
)
def test_what_is_asked_for(accept, expected):
    assert requested_syntax(accept) == expected


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.57',
        "image/jpeg",
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K}; q=0',
    ],
)
def test_what_cannot_be_sent_is_not_acceptable(accept):
    with pytest.raises(NotAcceptable):
        requested_syntax(accept)


def test_frame_lists_are_numbers_from_one_in_the_order_given():
    from router.endpoints.dicomweb.frames import FrameRequestError, frame_numbers

    assert frame_numbers("3,1,1") == [3, 1, 1]
    for bad in ("", "1,", "a", "1;2", "-1", "0", "1,0"):
        with pytest.raises(FrameRequestError) as caught:
            frame_numbers(bad)
        assert caught.value.status == 400


def test_a_frame_list_out_of_order_is_served_in_passes_that_each_read_forward():
    from router.endpoints.dicomweb.frames import _passes

    assert list(_passes([1, 2, 2, 5])) == [(5, [1, 2, 2, 5])]
    assert list(_passes([3, 1, 2, 2, 1])) == [(3, [3]), (2, [1, 2, 2]), (1, [1])]


@pytest.mark.parametrize(
    "accept,uncompressed,media",
    [
        (None, True, None),
        ("*/*", True, None),
        ('multipart/related; type="application/octet-stream"', True, None),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1', True, None),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', False, None),
        ('multipart/related; type="*/*"', False, None),
        ('multipart/related; type="image/jls"', False, frozenset({"image/jls"})),
        (
            'multipart/related; type="image/x-dicom-rle"; transfer-syntax=1.2.840.10008.1.2.5',
            False,
            frozenset({"image/dicom-rle"}),
        ),
        ('image/png, multipart/related; type="application/octet-stream"; q=0.5', True, None),
    ],
)
def test_what_frames_the_accept_header_asks_for(accept, uncompressed, media):
    from router.endpoints.dicomweb.frames import wanted_frames

    wanted = wanted_frames(accept)
    assert (wanted.uncompressed, wanted.media) == (uncompressed, media)


@pytest.mark.parametrize(
    "accept",
    [
        "image/png",
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.80',
        'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.5',
    ],
)
def test_frames_the_router_cannot_send_are_406(accept):
    from router.endpoints.dicomweb.frames import FrameRequestError, wanted_frames

    with pytest.raises(FrameRequestError) as caught:
        wanted_frames(accept)
    assert caught.value.status == 406
