"""Apply a resolved PS3.15 profile to a dataset, in place.

What each action does here:

- ``X`` removes, ``Z`` empties (a sequence loses its items, or is removed where the
  standard allows X), ``D`` writes a dummy of the attribute's VR (a sequence: as Z), ``K`` keeps (a sequence's items are
  de-identified recursively, as the standard asks), ``U`` replaces every UID value by
  its keyed ``2.25.`` UID, ``U*`` keeps a sequence and de-identifies its items;
- ``C`` (clean) depends on the VR: a DA or DT is shifted by the patient's keyed number
  of days (under Retain Longitudinal Modified Dates; a TM is kept, since whole days do
  not move it); a sequence is kept and de-identified recursively, with the text the
  table does not name inside it cleaned as well; an AE title becomes a
  keyed pseudonym; text has the patient's own identifiers (name parts, IDs, accession
  number, birth date) cut out of it; anything else is kept.

Patient's Name and Patient ID become a pseudonym (keyed, or from a lookup table), the
same for every instance of the patient. Under Retain Longitudinal Modified Dates every
DA and DT value is shifted, listed in the table or not (PS3.15 E.1.1 note 4).
Attributes the table does not name are kept, except private attributes (removed unless
Retain Safe Private keeps a listed one) and overlay and curve groups whose data is
removed. The result carries Patient Identity Removed, the method and its CID 7050
codes, and Longitudinal Temporal Information Modified.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections import Counter
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

from router.deid.keys import Keyring
from router.deid.profile import Profile
from router.tables import LookupTable

PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
IDENTITY_REMOVED, METHOD = 0x00120062, 0x00120063
METHOD_CODES = 0x00120064  # De-identification Method Code Sequence
LONGITUDINAL_MODIFIED = 0x00280303
MODIFIED_DATES = "retain_longitudinal_modified_dates"
FULL_DATES = "retain_longitudinal_full_dates"

CID_7050 = {
    None: ("113100", "Basic Application Confidentiality Profile"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

TEXT_VRS = {"LO", "LT", "SH", "ST", "UT", "UC", "PN", "CS"}
DUMMIES = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "UR": "http://example.invalid",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
    "OB": b"\0\0",
    "OW": b"\0\0",
    "OD": b"\0" * 8,
    "OF": b"\0" * 4,
    "OL": b"\0" * 4,
    "OV": b"\0" * 8,
    "UN": b"\0\0",
}
FILE_META_AE_TAGS = (0x00020016, 0x00020017, 0x00020018)
IMPLEMENTATION_CLASS, IMPLEMENTATION_VERSION = 0x00020012, 0x00020013
# The Implementation Class UID of files the router de-identified (a UUID-derived 2.25 UID, fixed).
IMPLEMENTATION_UID = "2.25.331114056858831486114601867974090797565"


@dataclass(frozen=True)
class SafePrivate:
    """Private attributes Retain Safe Private keeps: a creator's block in a group, some or all elements."""

    group: int
    creator: str
    elements: tuple[int, ...] | None = None  # low bytes (0x00-0xFF); None: the whole block

    def keeps(self, tag: int, creator: str | None) -> bool:
        if tag >> 16 != self.group or creator is None or creator.strip() != self.creator:
            return False
        return self.elements is None or (tag & 0xFF) in self.elements


@dataclass(frozen=True)
class Settings:
    profile: Profile
    keys: Keyring
    pseudonym_prefix: str = "ANON"
    patient_table: LookupTable | None = None
    safe_private: tuple[SafePrivate, ...] = ()
    implementation_uid: str = IMPLEMENTATION_UID
    implementation_version: str = "DICOM_ROUTER"


class UnmappedPatient(LookupError):
    """The patient lookup table has no row for the instance's patient."""


@dataclass
class Report:
    """What one de-identification did: for the audit trail, the re-identification map and route-test."""

    patient_id: tuple[str, str] | None = None
    patient_name: tuple[str, str] | None = None
    uids: dict[str, str] = field(default_factory=dict)
    date_shift_days: int | None = None
    actions: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{n} {a}" for a, n in sorted(self.actions.items())]
        if self.date_shift_days is not None:
            parts.append(f"dates shifted {self.date_shift_days} days")
        return ", ".join(parts)


class Deidentifier:
    """PS3.15 de-identification of a header in place.

    ``rewrite_sequence(ds, tag, edit)``, if given, is offered each sequence first: it applies
    ``edit`` to every item and returns True, or returns False to have the sequence read and
    walked here (the spool passes one that rewrites a sequence left in its file item by item).
    """

    def __init__(self, settings: Settings, rewrite_sequence=None):
        self.settings = settings
        self.profile = settings.profile
        self.options = settings.profile.options
        self.rewrite_sequence = rewrite_sequence

    def apply(self, ds: Dataset) -> Report:
        """De-identify ``ds`` (a header with file meta) in place; raises :class:`UnmappedPatient`."""
        original_id = _text(ds.get(PATIENT_ID))
        original_name = _text(ds.get(PATIENT_NAME))
        run = self.begin(original_id, original_name, _identifying_pattern(ds))
        run.dataset(ds)
        self.conclude(run, original_id, original_name, PATIENT_ID in ds, PATIENT_NAME in ds)
        implicit, little = _encoding(ds)
        for tag, vr, value in self.marks(run.report, implicit, little):
            ds[tag] = value if isinstance(value, RawDataElement) else DataElement(tag, vr, value)
        self._replace_file_meta(ds)
        return run.report

    def begin(self, original_id: str, original_name: str, identifying: re.Pattern | None) -> Run:
        """The walk over one instance whose Patient ID and Name are these; raises :class:`UnmappedPatient`."""
        new_id, new_name = self._pseudonyms(original_id, original_name)
        shift = self.settings.keys.date_shift(original_id or original_name) if MODIFIED_DATES in self.options else None
        return Run(self, Report(), shift, identifying, new_id, new_name)

    def conclude(self, run: Run, original_id: str, original_name: str, had_id: bool, had_name: bool) -> None:
        """Fill in the report of a finished walk."""
        if original_id or had_id:
            run.report.patient_id = (original_id, run.new_id)
        if original_name or had_name:
            run.report.patient_name = (original_name, run.new_name)
        run.report.date_shift_days = run.shift.days if run.shift is not None else None

    def marks(self, report: Report, implicit: bool, little: bool) -> list[tuple[int, str, object]]:
        """The elements that say what was done, as ``(tag, VR, value)``: Patient Identity Removed,
        the method and its codes (a raw element, the same bytes every time) and, when dates
        were shifted, kept or removed, Longitudinal Temporal Information Modified."""
        dates_touched = report.date_shift_days is not None or report.actions.get("dates removed", 0) > 0
        chosen = [o for o in CID_7050 if o is not None and o in self.options]
        marks: list[tuple[int, str, object]] = [
            (IDENTITY_REMOVED, "CS", "YES"),
            (METHOD, "LO", ["DICOM PS3.15 E.1 Basic Profile"] + [CID_7050[o][1][:64] for o in chosen]),
            (METHOD_CODES, "SQ", self._method_codes(implicit, little)),
        ]
        if MODIFIED_DATES in self.options:
            marks.append((LONGITUDINAL_MODIFIED, "CS", "MODIFIED"))
        elif FULL_DATES in self.options:
            marks.append((LONGITUDINAL_MODIFIED, "CS", "UNMODIFIED"))
        elif dates_touched:
            marks.append((LONGITUDINAL_MODIFIED, "CS", "REMOVED"))
        return marks

    def _pseudonyms(self, patient_id: str, patient_name: str) -> tuple[str, str]:
        table = self.settings.patient_table
        if table is not None:
            row = table.rows.get(patient_id.strip())
            if row is None:
                raise UnmappedPatient(f"patient ID {patient_id!r} is not in {table.path.name}")
            pid = row["PseudonymID"]
            return pid, row.get("PseudonymName") or pid
        if not patient_id and not patient_name:
            return "", ""
        token = self.settings.keys.pseudonym("patient", patient_id or patient_name)
        pid = f"{self.settings.pseudonym_prefix}{token}"[:64]
        return pid, pid

    @functools.cache  # noqa: B019 - one per encoding, for the life of the de-identifier
    def _method_codes(self, implicit: bool, little: bool) -> RawDataElement:
        """The De-identification Method Code Sequence, the same for every instance: encoded once
        per encoding, and carried as the bytes pydicom wrote (the spliced writer copies them)."""
        items = []
        for option in [None] + [o for o in CID_7050 if o in self.options]:
            code, meaning = CID_7050[option]
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, little
        write_data_element(fp, DataElement(METHOD_CODES, "SQ", Sequence(items)))
        encoded = fp.getvalue()
        header = 8 if implicit else 12
        return RawDataElement(
            Tag(METHOD_CODES), None if implicit else "SQ", len(encoded) - header, encoded[header:], 0, implicit, little
        )

    def _replace_file_meta(self, ds: Dataset) -> None:
        """PS3.15 E.1.1 item 7: the file meta and preamble describe the de-identifier, nothing else."""
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        if "retain_device_identity" not in self.options:
            for tag in FILE_META_AE_TAGS:
                if tag in meta:
                    del meta[tag]
        for tag in [t for t in map(int, meta.keys()) if t >> 16 & 1 or t >= 0x00020100]:
            del meta[tag]
        meta[IMPLEMENTATION_CLASS] = DataElement(IMPLEMENTATION_CLASS, "UI", self.settings.implementation_uid)
        meta[IMPLEMENTATION_VERSION] = DataElement(IMPLEMENTATION_VERSION, "SH", self.settings.implementation_version)
        ds.preamble = b"\0" * 128


WALK, CLEAN = "walk", "clean"


class Run:
    """One walk over one dataset, carrying what the walk needs at every level (also what the
    anonymize stage's element-stream walk uses: :meth:`decide` and the report)."""

    def __init__(
        self,
        deid: Deidentifier,
        report: Report,
        shift: dt.timedelta | None,
        identifying: re.Pattern | None,
        new_id: str,
        new_name: str,
    ):
        self.deid = deid
        self.profile = deid.profile
        self.keys = deid.settings.keys
        self.report = report
        self.shift = shift
        self.identifying = identifying
        self.new_id = new_id
        self.new_name = new_name

    def dataset(self, ds: Dataset, cleaning: bool = False) -> None:
        """De-identify ``ds``; ``cleaning``: inside a sequence being cleaned, so unlisted text is cleaned too.

        Elements are decoded only when they are changed or descended into: the ones kept as
        they are stay raw and are written back byte for byte.
        """
        creators = _private_creators(ds)
        removed_groups = set()
        for tag in list(map(int, ds.keys())):
            vr = _vr(ds, tag)
            if tag >> 16 & 1:
                self._private(ds, tag, vr, creators)
                continue
            if tag in (PATIENT_ID, PATIENT_NAME):
                self._pseudonym(ds, tag)
                continue
            action = self.decide(tag, vr, cleaning)
            if action == WALK:
                self._sequence(ds, tag, cleaning)
            elif action == CLEAN:
                self._clean(ds[tag])
            elif action is not None:
                if removes_group(tag, action):
                    removed_groups.add(tag >> 16)
                self._act(ds, tag, vr, action)
        for group in removed_groups:
            for tag in [t for t in map(int, ds.keys()) if t >> 16 == group]:
                del ds[tag]
                self.report.actions["removed"] += 1

    def decide(self, tag: int, vr: str, cleaning: bool) -> str | None:
        """What the walk does with a public element other than Patient's Name and ID: a profile
        action (X, K, Z, D, U, U*, C), :data:`WALK` (an unlisted sequence: its items walked),
        :data:`CLEAN` (unlisted text in a sequence being cleaned), or None (kept as it is)."""
        hit = self.profile.decide(tag)
        action = hit[1].action if hit else None
        if action in ("Z", "D") and vr == "SQ" and hit is not None and hit[1].removable:
            return "X"
        if action is None and vr in ("DA", "DT") and self.shift is not None:
            return "C"
        if action is None:
            if vr == "SQ":
                return WALK
            if cleaning and vr in TEXT_VRS and vr != "CS":
                return CLEAN
        return action

    def keeps_private(self, tag: int, vr: str, creators: dict[int, str]) -> bool:
        """Whether Retain Safe Private keeps the private element ``tag`` (``creators``: the data
        set's private creator elements and their values)."""
        if "retain_safe_private" not in self.deid.options:
            return False
        safe = self.deid.settings.safe_private
        if tag & 0xFF00 == 0:  # a private creator element itself
            return any(s.group == tag >> 16 and s.creator == creators.get(tag, "").strip() for s in safe)
        return any(s.keeps(tag, creators.get((tag & 0xFFFF0000) | (tag >> 8 & 0xFF))) for s in safe)

    def count(self, what: str, vr: str | None = None) -> None:
        self.report.actions[what] += 1
        if vr in ("DA", "DT", "TM"):
            self.report.actions["dates removed"] += 1

    def _act(self, ds: Dataset, tag: int, vr: str, action: str) -> None:
        if action == "X":
            del ds[tag]
            self.count("removed", vr)
        elif action == "K":
            if vr == "SQ":
                self._sequence(ds, tag)
            self.report.actions["kept"] += 1
        elif action in ("Z", "D") and vr == "SQ":
            ds[tag].value = Sequence([])
            self.report.actions["emptied"] += 1
        elif action == "Z":
            _overwritable(ds, tag, vr).value = None if vr not in ("OB", "OW", "UN") else b""
            self.count("emptied", vr)
        elif action == "D" or action == "U" and vr != "SQ":
            self._dummy(ds[tag] if vr == "UI" else _overwritable(ds, tag, vr))
        elif action in ("U", "U*") and vr == "SQ":
            self._sequence(ds, tag)
            self.report.actions["kept"] += 1
        else:
            self._clean(ds[tag])

    def _sequence(self, ds: Dataset, tag: int, cleaning: bool = False) -> None:
        """De-identify each item of the sequence ``tag``, through the de-identifier's
        ``rewrite_sequence`` when it takes the sequence (one left unread in its file)."""
        rewrite = self.deid.rewrite_sequence
        if rewrite is None or not rewrite(ds, tag, lambda item: self.dataset(item, cleaning)):
            self._items(ds[tag], cleaning)

    def _items(self, element: DataElement, cleaning: bool = False) -> None:
        for item in element.value or ():
            self.dataset(item, cleaning)

    def _pseudonym(self, ds: Dataset, tag: int) -> None:
        element = ds[tag]
        new = self.pseudonym_value(tag, element.value)
        if new is not element.value:
            element.value = new

    def _dummy(self, element: DataElement) -> None:
        new = self.dummy_value(element.VR, element.value)
        if new is not element.value:
            element.value = new

    def _clean(self, element: DataElement) -> None:
        if element.VR == "SQ":
            self._items(element, cleaning=True)
            self.report.actions["cleaned"] += 1
            return
        new = self.cleaned_value(element.VR, element.value)
        if new is not element.value:
            element.value = new

    def pseudonym_value(self, tag: int, value):
        """Patient ID's or Name's new value (``value`` itself when it is empty)."""
        if not value_text(value):
            return value
        self.report.actions["pseudonymized"] += 1
        return self.new_id if tag == PATIENT_ID else self.new_name

    def dummy_value(self, vr: str, value):
        """What D (and U, for a UID) writes in place of ``value``: every UID its keyed one, or a
        dummy of the VR."""
        if vr == "UI":
            return self._remapped_uids(value)
        self.report.actions["replaced"] += 1
        return DUMMIES.get(vr, None)

    def _remapped_uids(self, values):
        if not values:
            return values
        many = not isinstance(values, str)
        mapped = []
        for uid in values if many else [values]:
            new = self.keys.uid(str(uid))
            self.report.uids[str(uid)] = new
            mapped.append(new)
        self.report.actions["uids remapped"] += 1
        return mapped if many else mapped[0]

    def cleaned_value(self, vr: str, value):
        """What C writes in place of ``value`` (not a sequence): a date shifted, an AE title's
        keyed pseudonym, text without the patient's identifiers; anything else as it was."""
        if vr in ("DA", "DT"):
            if self.shift is None:
                return value
            self.report.actions["dates shifted"] += 1
            return _shift_dates(value, vr, self.shift)
        new = value
        if vr == "AE":
            if value_text(value):
                new = "AE" + self.keys.pseudonym("ae", value_text(value), 14)
        elif vr in TEXT_VRS and self.identifying is not None and value:
            new = _scrub(value, self.identifying)
        self.report.actions["cleaned"] += 1
        return new

    def _private(self, ds: Dataset, tag: int, vr: str, creators: dict[int, str]) -> None:
        if self.keeps_private(tag, vr, creators):
            if vr == "SQ" and tag & 0xFF00:
                self._sequence(ds, tag)
            return
        del ds[tag]
        self.report.actions["private removed"] += 1


def removes_group(tag: int, action: str) -> bool:
    """Whether removing ``tag`` removes its whole group: an overlay's or curve's data (PS3.15 E.1.1)."""
    return action == "X" and tag >> 16 & 0xFF00 in (0x6000, 0x5000) and tag & 0xFFFF in (0x3000, 0x0000)


def _encoding(ds: Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the file ``ds`` was read from."""
    implicit, little = ds.original_encoding
    if implicit is None:
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    return bool(implicit), bool(little)


def _overwritable(ds: Dataset, tag: int, vr: str) -> DataElement:
    """The element whose value is about to be replaced: one whose long value was left in the
    file (deferred) becomes an empty element of its VR, so the value is never read just to be
    thrown away."""
    element = ds.get_item(tag, keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None and element.length:
        ds[tag] = DataElement(tag, vr, None)
    return ds[tag]


def _vr(ds: Dataset, tag: int) -> str:
    """The VR of an element without decoding it (implicit VR files leave it to the dictionary)."""
    vr = ds.get_item(tag, keep_deferred=True).VR
    if vr:
        return vr
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _private_creators(ds: Dataset) -> dict[int, str]:
    return {t: _text(ds[t]) for t in map(int, ds.keys()) if t >> 16 & 1 and 0x0010 <= t & 0xFFFF <= 0x00FF}


def _text(element) -> str:
    return "" if element is None else value_text(element.value)


def value_text(value) -> str:
    """A decoded value as one string (values of a multi-valued one joined by backslashes)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _tags(*keywords: str) -> tuple[int, ...]:
    return tuple(int(Tag(keyword)) for keyword in keywords)


IDENTIFIER_TAGS = _tags("PatientID", "OtherPatientIDs", "AccessionNumber", "IssuerOfPatientID", "MedicalRecordLocator")
NAME_TAGS = _tags(
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
)
BIRTH_DATE = 0x00100030


def _identifying_pattern(ds: Dataset) -> re.Pattern | None:
    """The patient's own identifiers as one case-insensitive pattern, for cleaning free text."""
    present = set(map(int, ds.keys()))

    def text(tag: int) -> str:
        return _text(ds[tag]) if tag in present else ""

    return pattern_for(tuple(map(text, IDENTIFIER_TAGS)), tuple(map(text, NAME_TAGS)), text(BIRTH_DATE))


@functools.lru_cache(maxsize=256)
def pattern_for(identifiers: tuple[str, ...], names: tuple[str, ...], birth: str) -> re.Pattern | None:
    """The pattern for these identifier, name and birth date values (the same for every
    instance of a study, so made once)."""
    tokens = set()
    for text in identifiers:
        for value in text.split("\\"):
            if len(value.strip()) >= 3:
                tokens.add(value.strip())
    for text in names:
        for part in re.split(r"[\^=\\ ,]+", text):
            if len(part) >= 3:
                tokens.add(part)
    if re.fullmatch(r"\d{8}", birth):
        tokens.update(
            {
                birth,
                f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
                f"{birth[6:]}.{birth[4:6]}.{birth[:4]}",
                f"{birth[4:6]}/{birth[6:]}/{birth[:4]}",
                f"{birth[6:]}/{birth[4:6]}/{birth[:4]}",
            }
        )
    if not tokens:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)


def _scrub(value, pattern: re.Pattern):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_scrub(v, pattern) for v in value]
    text = pattern.sub("", str(value))
    return re.sub(r"\s{2,}", " ", text).strip()


def _shift_dates(value, vr: str, shift: dt.timedelta):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_shift_dates(v, vr, shift) for v in value]
    text = str(value or "")
    if len(text) < 8 or not text[:8].isdigit():
        return value if text else value
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) + shift
    except ValueError:
        return DUMMIES[vr]
    return day.strftime("%Y%m%d") + text[8:]
