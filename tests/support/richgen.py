"""Synthetic but complete CT studies full of (made-up) identifying attributes, for de-identification tests.

Each instance is a valid CT Image IOD (dciodvfy reports no errors on it) carrying what
real instances carry: names, IDs, dates, times and datetimes, institution and device
identity, free text that repeats the patient's name and ID, sequences referencing other
instances, private groups, an overlay, and optional trailing elements after the pixel data.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from tests.support.dicomgen import IMPL_UID, _pixels

PATIENTS = {
    "P001": ("DOE^JANE", "19700312", "F"),
    "P002": ("ROE^RICHARD", "19551104", "M"),
    "P003": ("POE^EDGAR", "19800119", "M"),
}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def rich_ct(
    patient: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    index: int,
    study_date: str,
    referenced: str | None = None,
    rows: int = 64,
    implicit: bool = False,
) -> Dataset:
    name, birth, sex = PATIENTS[patient]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = "101500"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.AcquisitionDateTime = study_date + "101700.000000"
    ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = "101000", "101600", "101700", "101800"
    ds.AccessionNumber = f"A{patient}{study_date[2:]}"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "St. Example Hospital"
    ds.InstitutionAddress = "1 Example Road, Exampletown"
    ds.ReferringPhysicianName = "WHO^JOHN"
    ds.StationName = "CTSCAN01"
    ds.StudyDescription = f"CT chest for {name.replace('^', ' ')}"
    ds.SeriesDescription = "Axial 1mm"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformingPhysicianName = "HOUSE^GREGORY"
    ds.OperatorsName = "TECH^TINA"
    ds.ManufacturerModelName = "ScanMaster 3000"
    ds.ReferencedStudySequence = Sequence([_ref("1.2.840.10008.3.1.2.3.1", generate_uid())])
    if referenced:
        ds.ReferencedImageSequence = Sequence([_ref(CTImageStorage, referenced)])
        ds.SourceImageSequence = Sequence([_ref(CTImageStorage, referenced)])
    ds.PatientName = name
    ds.PatientID = patient
    ds.IssuerOfPatientID = "EXAMPLE_HOSPITAL"
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.OtherPatientIDsSequence = Sequence([_other_id(f"MRN{patient}")])
    ds.PatientAge = "054Y"
    ds.PatientSize = 1.72
    ds.PatientWeight = 70.5
    ds.PatientAddress = "2 Patient Lane"
    ds.AdditionalPatientHistory = f"Patient {patient} referred after fall"
    ds.PatientComments = f"{name.replace('^', ' ')} prefers morning slots"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.DeviceSerialNumber = "SN-998877"
    ds.SoftwareVersions = "1.0"
    ds.ProtocolName = "CHEST ROUTINE"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "S1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Laterality = ""
    ds.ImageComments = f"Reviewed for {patient}"
    ds.RequestAttributesSequence = Sequence([_request(patient)])
    ds.AcquisitionContextSequence = Sequence([_context_text(f"Scanned {name.replace('^', ' ')} supine")])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.BurnedInAnnotation = "NO"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", f"{name} private note")
    ds.add_new(0x00091002, "DS", "3.5")
    ds.add_new(0x00110010, "LO", "SAFE VENDOR")
    ds.add_new(0x00111010, "DS", "0.5")
    ds.add_new(0x00111011, "LO", "operator remark")
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", rows)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", b"\0" * (rows * rows // 8))
    ds.PixelData = _pixels(rows * rows * 2, index)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPL_UID
    ds.file_meta.SourceApplicationEntityTitle = "CTSCAN01"
    return ds


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _other_id(value: str) -> Dataset:
    item = Dataset()
    item.PatientID = value
    item.TypeOfPatientID = "TEXT"
    return item


def _context_text(text: str) -> Dataset:
    item = Dataset()
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
    item.TextValue = text
    return item


def _request(patient: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = f"RP-{patient}"
    item.ScheduledProcedureStepID = f"SPS-{patient}"
    item.RequestedProcedureDescription = "CT chest"
    return item


def write_rich_study(
    directory: Path | str,
    patient: str = "P001",
    series: int = 2,
    per_series: int = 3,
    study_date: str = "20240315",
    implicit: bool = False,
) -> list[Path]:
    """One study of ``series`` x ``per_series`` instances; each instance references the series' first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for s in range(series):
        series_uid = generate_uid()
        first = None
        for i in range(per_series):
            ds = rich_ct(patient, study_uid, series_uid, frame_uid, i, study_date, referenced=first, implicit=implicit)
            ds.SeriesNumber = s + 1
            first = first or ds.SOPInstanceUID
            path = directory / f"{patient}-{study_date}-s{s}-i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
