"""QIDO-RS requests as C-FIND identifiers (PS3.18 10.6, 8.3.4).

A request's resource gives the level (``/studies``: STUDY, ``.../series``: SERIES,
``.../instances``: IMAGE) and the UIDs in its path; its query parameters give matching
keys (``{attribute}={value}``, the attribute by keyword or as eight hex digits; DICOM's own
range, wildcard and list syntax), return keys (``includefield``: keywords or tags; ``all``
adds nothing, as a C-FIND can only name the keys it wants),
and ``limit`` and ``offset``. The default return keys of each level (PS3.18 Table 10.6.3-3 to
-5) are always asked for. A parameter that is not one of these, an unknown attribute, a key
of a sequence, or a value that cannot be an integer is a :class:`BadQuery` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import Tag

STUDY_KEYS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",
)
SERIES_KEYS = (
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)
INSTANCE_KEYS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
LEVEL_KEYS = {"STUDY": STUDY_KEYS, "SERIES": SERIES_KEYS, "IMAGE": INSTANCE_KEYS}
HIGHER_LEVELS = {"STUDY": (), "SERIES": ("STUDY",), "IMAGE": ("STUDY", "SERIES")}
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_DATE = r"\d{4}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])"
_TIME = r"([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?"
_DATETIME = rf"{_DATE}({_TIME})?([+-]\d{{4}})?"
TEMPORAL = {
    vr: re.compile(rf"^(({p})?-({p})?|{p})(\\(({p})?-({p})?|{p}))*$")
    for vr, p in (("DA", _DATE), ("TM", _TIME), ("DT", _DATETIME))
}
MAX_LIMIT = 100_000


class BadQuery(ValueError):
    """A query parameter the router cannot take; the message names it."""


@dataclass(frozen=True)
class QidoQuery:
    level: str
    identifier: Dataset
    limit: int | None
    offset: int


def qido_query(level: str, path_uids: dict[str, str], params: list[tuple[str, str]]) -> QidoQuery:
    """The C-FIND identifier (Study Root) for a QIDO-RS request at ``level``.

    ``path_uids``: keyword -> UID from the resource path; ``params``: the query parameters in order.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    wanted = list(LEVEL_KEYS[level])
    if not path_uids.get("StudyInstanceUID"):
        for higher in HIGHER_LEVELS[level]:
            wanted += LEVEL_KEYS[higher]
    for keyword in wanted:
        _set(identifier, keyword, "")
    for keyword, uid in path_uids.items():
        _set(identifier, keyword, uid)
    limit, offset = None, 0
    for name, value in params:
        if name == "limit":
            limit = _count(name, value, MAX_LIMIT)
        elif name == "offset":
            offset = _count(name, value, None)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadQuery(f"fuzzymatching={value!r}: true or false")
        elif name == "includefield":
            for field in filter(None, (f.strip() for f in value.split(","))):
                if field == "all":  # C-FIND cannot ask for every attribute: the defaults are asked
                    continue
                keyword = _keyword(field, "includefield")
                if keyword not in identifier:
                    _set(identifier, keyword, "")
        else:
            keyword = _keyword(name, name)
            if keyword in path_uids:
                raise BadQuery(f"{name}: already given in the resource path")
            _set(identifier, keyword, value)
    return QidoQuery(level, identifier, limit, offset)


def _keyword(field: str, parameter: str) -> str:
    if "." in field:
        raise BadQuery(f"{parameter}: {field!r} names an attribute inside a sequence, which is not supported")
    if HEX_TAG.match(field):
        keyword = keyword_for_tag(Tag(int(field, 16)))
        if not keyword or tag_for_keyword(keyword) is None:  # unknown, or a repeating group's
            raise BadQuery(f"{parameter}: {field} is not a tag of the DICOM dictionary")
        return keyword
    if tag_for_keyword(field) is None:
        raise BadQuery(f"{parameter}: {field!r} is neither a query parameter nor a DICOM attribute keyword")
    return field


def _set(identifier: Dataset, keyword: str, value: str) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise BadQuery(f"{keyword!r} is not a DICOM attribute keyword")
    vr = dictionary_VR(tag)
    if vr == "SQ":
        if value:
            raise BadQuery(f"{keyword}: a sequence cannot be matched by value")
        setattr(identifier, keyword, [])
        return
    if not value:
        setattr(identifier, keyword, None)
        return
    pattern = TEMPORAL.get(vr)
    if pattern is not None and not pattern.match(value):
        raise BadQuery(f"{keyword}={value!r}: not a {vr} value or range")
    try:
        if vr in ("US", "SS", "UL", "SL"):
            setattr(identifier, keyword, int(value))
            return
        if vr in ("FL", "FD"):
            setattr(identifier, keyword, float(value))
            return
        if vr in ("IS", "DS"):
            float(value.split("\\")[0].split("-")[0])
    except ValueError:
        raise BadQuery(f"{keyword}={value!r}: a number is expected") from None
    setattr(identifier, keyword, value)


def _count(name: str, value: str, ceiling: int | None) -> int:
    if not value.isdigit():
        raise BadQuery(f"{name}={value!r}: a whole number is expected")
    number = int(value)
    return min(number, ceiling) if ceiling is not None else number
