"""Datasets that stay in their files: C-GET and C-MOVE sub-operations sent from a file.

pynetdicom's C-GET and C-MOVE SCPs accept only :class:`~pydicom.Dataset` objects from the
handler and pass them to ``Association.send_c_store``, which would encode them whole in
memory. A :class:`FileBackedDataset` is a Dataset that holds only the instance's UIDs and
the path of its Part-10 file; :func:`install_send_from_file` makes ``send_c_store`` send
such a dataset from its file (streamed, PDU by PDU, like every other send of the router),
or from the file its ``convert`` makes when the association did not accept the file's
transfer syntax for its SOP class. One that ``convert`` cannot make is not sent: the call
answers Failure 0xC000 itself, which pynetdicom counts as a failed sub-operation (the caller
logs why, with the request's context).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pynetdicom.association import Association

from router.engine.classes import RouterAssociation


class FileBackedDataset(Dataset):
    """An instance to send, by path; carries SOP Class and Instance UIDs for pynetdicom's bookkeeping.

    ``transfer_syntax`` is the file's; ``convert(accepted)``, given the transfer syntaxes the
    association accepted for the SOP class when that is not among them, returns a file in one
    of them, or None when it cannot.
    """

    def __init__(
        self,
        path: Path | str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str | None = None,
        convert: Callable[[set[str]], Path | None] | None = None,
    ):
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        object.__setattr__(self, "file_path", Path(path))
        object.__setattr__(self, "transfer_syntax", transfer_syntax)
        object.__setattr__(self, "convert", convert)

    def file_for(self, accepted: set[str]) -> Path | None:
        """The file to send where ``accepted`` are the syntaxes accepted for this SOP class, or None."""
        if self.convert is None or self.transfer_syntax is None or self.transfer_syntax in accepted:
            return self.file_path
        return self.convert(accepted)


def accepted_syntaxes(association: Association, sop_class_uid: str) -> set[str]:
    """The transfer syntaxes ``association`` accepted for ``sop_class_uid``."""
    return {
        str(cx.transfer_syntax[0])
        for cx in association.accepted_contexts
        if cx.abstract_syntax == sop_class_uid and cx.transfer_syntax
    }


def install_send_from_file() -> None:
    original = RouterAssociation.send_c_store
    if getattr(original, "_sends_from_file", False):
        return

    def send_c_store(self, dataset, *args, **kwargs):
        if isinstance(dataset, FileBackedDataset):
            dataset = dataset.file_for(accepted_syntaxes(self, str(dataset.SOPClassUID)))
            if dataset is None:
                return _not_sent()
        return original(self, dataset, *args, **kwargs)

    send_c_store._sends_from_file = True
    RouterAssociation.send_c_store = send_c_store


def _not_sent() -> Dataset:
    status = Dataset()
    status.Status = 0xC000
    return status
