"""Datasets that stay in their files: C-GET and C-MOVE sub-operations sent from a file.

pynetdicom's C-GET and C-MOVE SCPs accept only :class:`~pydicom.Dataset` objects from the
handler and pass them to ``Association.send_c_store``, which would encode them whole in
memory. A :class:`FileBackedDataset` is a Dataset that holds only the instance's UIDs and
the path of its Part-10 file; :func:`install_send_from_file` makes ``send_c_store`` send
such a dataset from its file (streamed, PDU by PDU, like every other send of the router).
"""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset
from pynetdicom.association import Association


class FileBackedDataset(Dataset):
    """An instance to send, by path; carries SOP Class and Instance UIDs for pynetdicom's bookkeeping."""

    def __init__(self, path: Path | str, sop_class_uid: str, sop_instance_uid: str):
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        object.__setattr__(self, "file_path", Path(path))


def install_send_from_file() -> None:
    original = Association.send_c_store
    if getattr(original, "_sends_from_file", False):
        return

    def send_c_store(self, dataset, *args, **kwargs):
        if isinstance(dataset, FileBackedDataset):
            dataset = dataset.file_path
        return original(self, dataset, *args, **kwargs)

    send_c_store._sends_from_file = True
    Association.send_c_store = send_c_store
