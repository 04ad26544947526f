"""The transfer syntax a WADO-RS Accept header asks for."""

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
