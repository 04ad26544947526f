"""Query/retrieve information models: SOP classes, levels, unique keys."""

from __future__ import annotations

from pydicom import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time, unseen by mypy
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

PATIENT_FIND = str(PatientRootQueryRetrieveInformationModelFind)
STUDY_FIND = str(StudyRootQueryRetrieveInformationModelFind)
WORKLIST_FIND = str(ModalityWorklistInformationFind)
PATIENT_MOVE = str(PatientRootQueryRetrieveInformationModelMove)
STUDY_MOVE = str(StudyRootQueryRetrieveInformationModelMove)
PATIENT_GET = str(PatientRootQueryRetrieveInformationModelGet)
STUDY_GET = str(StudyRootQueryRetrieveInformationModelGet)

QR_FIND = (PATIENT_FIND, STUDY_FIND)
MOVE = (PATIENT_MOVE, STUDY_MOVE)
GET = (PATIENT_GET, STUDY_GET)

# The C-FIND model that lists what a C-MOVE or C-GET of a model would retrieve.
FIND_FOR_RETRIEVE = {
    PATIENT_MOVE: PATIENT_FIND,
    STUDY_MOVE: STUDY_FIND,
    PATIENT_GET: PATIENT_FIND,
    STUDY_GET: STUDY_FIND,
}
GET_FOR_FIND = {PATIENT_FIND: PATIENT_GET, STUDY_FIND: STUDY_GET}
MOVE_FOR_FIND = {PATIENT_FIND: PATIENT_MOVE, STUDY_FIND: STUDY_MOVE}

UNIQUE_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("SeriesInstanceUID",),
    "IMAGE": ("SOPInstanceUID",),
}
HIERARCHY = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def result_key(model: str, identifier: Dataset) -> tuple:
    """What makes a C-FIND result the same answer from two upstreams."""
    if model == WORKLIST_FIND:
        steps = identifier.get("ScheduledProcedureStepSequence") or []
        step_id = str(steps[0].get("ScheduledProcedureStepID", "")) if len(steps) else ""
        return (
            str(identifier.get("AccessionNumber", "")),
            step_id,
            str(identifier.get("StudyInstanceUID", "")),
            str(identifier.get("PatientID", "")),
        )
    level = str(identifier.get("QueryRetrieveLevel", "")).upper()
    keys = UNIQUE_KEYS.get(level, HIERARCHY)
    return (level,) + tuple(str(identifier.get(k, "")) for k in keys)
