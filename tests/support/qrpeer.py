"""A scripted pynetdicom Q/R SCP (Study Root C-FIND and C-GET) serving files from disk, at a chosen pace.

It answers hierarchical C-FINDs from the files' headers and C-GETs by sending the matching
files (streamed, never loaded whole), sleeping ``delay`` seconds before each, and records
the level of each C-FIND and whether a C-CANCEL reached it. With ``study_counts`` a
STUDY-level answer fills SOP Classes in Study and Number of Study Related Instances when
they are asked for.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydicom import Dataset, dcmread
from pynetdicom import evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from router import engine
from router.engine.application_entity import RouterAE
from router.engine.file_datasets import FileBackedDataset
from tests.support.peers import free_port

LEVEL_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
ORDER = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class ScriptedPACS:
    def __init__(self, files: list[Path], ae_title: str = "SCRIPTED", delay: float = 0.0, study_counts: bool = False):
        self.ae_title = ae_title
        self.delay = delay
        self.study_counts = study_counts
        self.find_levels: list[str] = []
        self.port = free_port()
        self.cancelled = threading.Event()
        self.sent = 0
        self.rows = []
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            self.rows.append(
                {**{k: str(ds.get(k, "")) for k in ORDER}, "SOPClassUID": str(ds.SOPClassUID), "path": Path(path)}
            )
        self.server = None

    def __enter__(self):
        engine.configure()
        ae = RouterAE(self.ae_title)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._on_find), (evt.EVT_C_GET, self._on_get)],
        )
        return self

    def __exit__(self, *exc):
        self.server.shutdown()

    def _matching(self, identifier: Dataset) -> list[dict]:
        rows = self.rows
        for key in ORDER:
            wanted = str(identifier.get(key, "") or "")
            if wanted and "*" not in wanted:
                values = set(wanted.split("\\"))
                rows = [r for r in rows if r[key] in values]
        return rows

    def _on_find(self, event):
        identifier = event.identifier
        level = str(identifier.QueryRetrieveLevel)
        self.find_levels.append(level)
        seen = set()
        matching = self._matching(identifier)
        for row in matching:
            key = row[LEVEL_KEYS[level]]
            if key in seen:
                continue
            seen.add(key)
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            for keyword in list(ORDER) + ["SOPClassUID"]:
                if keyword in identifier:
                    setattr(answer, keyword, row[keyword])
            if level == "STUDY":
                in_study = [r for r in matching if r["StudyInstanceUID"] == key]
                if "SOPClassesInStudy" in identifier:
                    answer.SOPClassesInStudy = sorted({r["SOPClassUID"] for r in in_study}) if self.study_counts else ""
                if "NumberOfStudyRelatedInstances" in identifier:
                    answer.NumberOfStudyRelatedInstances = len(in_study) if self.study_counts else ""
            yield 0xFF00, answer
        yield 0x0000, None

    def _on_get(self, event):
        rows = self._matching(event.identifier)
        yield len(rows)
        for row in rows:
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            time.sleep(self.delay)
            self.sent += 1
            yield 0xFF00, FileBackedDataset(row["path"], row["SOPClassUID"], row["SOPInstanceUID"])
