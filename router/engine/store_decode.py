"""C-STORE messages decoded with ``struct``, data sets written straight to their file (owned code, declared in router/engine/changes.py).

pynetdicom 3.0.4 decodes every command set into a pydicom Dataset, copies it element by
element into the primitive, and with STORE_RECV_CHUNKED_DATASET opens a
``NamedTemporaryFile`` for each received data set and flushes it after every fragment:
about 1.1 ms of the socket thread's time per received instance, and 0.6 ms per C-STORE-RSP
on the sending side, measured here. :func:`install_fast_store_decode` takes plain C-STOREs
a shorter way:

- a C-STORE-RQ whose command set fits one PDV becomes its primitive directly, and its data
  set is written fragment by fragment to a file in the temporary directory (the spool's
  ``incoming/``) with the same Part-10 header pynetdicom writes (a test holds the files
  byte-identical), usually one of the empty files :mod:`router.engine.spare_files` keeps
  ready, its checksum (:func:`router.engine.part10.new_checksum`) computed as it is written;
  after a fragment (but the last) that ends a mebibyte or more since the last time, the kernel
  is asked to start writing the file out (``sync_file_range``), so the fsync before the
  response mostly finds it written; the
  request is then served on the same thread (:mod:`router.engine.store_scp`) when it can be;
- a C-STORE-RSP carrying only the usual elements becomes its primitive directly.

Values still go through pynetdicom's validating setters. A command set with any other
element, several values, a fragment boundary inside it, or anything the setters refuse
goes to pynetdicom unchanged, and so does everything while something is bound to
EVT_DIMSE_RECV (which needs the message object). A data set that cannot be written (disk
full) is read to its end and discarded; the request then carries ``_receive_error`` and the
handler answers with an out-of-resources status instead of the association being aborted.
"""

from __future__ import annotations

import ctypes
import os
import struct
from io import BytesIO, FileIO

import structlog
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from router.engine import store_scp
from router.engine.application_entity import received_files_of
from router.engine.association_log import association_fields
from router.engine.classes import RouterDIMSE
from router.engine.part10 import FileMetaValues, encode_file_meta, new_checksum
from router.engine.reactors import on_reactor_exit
from router.engine.spare_files import ReceivedFiles, close_and_remove

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
PREAMBLE = b"\x00" * 128 + b"DICM"
IOV_MAX = 1024

REQUEST_ELEMENTS = frozenset({0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000, 0x1030, 0x1031})
REQUEST_REQUIRED = frozenset({0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
RESPONSE_ELEMENTS = frozenset({0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x1000})
RESPONSE_REQUIRED = frozenset({0x0100, 0x0120, 0x0800, 0x0900})

_stock_receive_primitive = DIMSEServiceProvider.receive_primitive
log = structlog.get_logger("router.engine")


class NotPlain(Exception):
    """The message is not one the fast path takes; pynetdicom decodes it."""


def parse_command_set(data) -> dict[int, bytes]:
    """The elements of an Implicit VR Little Endian group 0000 command set, by element number."""
    fields: dict[int, bytes] = {}
    position, end = 0, len(data)
    while position < end:
        if end - position < 8:
            raise NotPlain("truncated element header")
        group, element, length = struct.unpack_from("<HHI", data, position)
        position += 8
        if group != 0 or length > end - position or element in fields:
            raise NotPlain("not a plain command set")
        fields[element] = bytes(data[position : position + length])
        position += length
    return fields


def _us(fields: dict[int, bytes], element: int) -> int:
    value = fields[element]
    if len(value) != 2:
        raise NotPlain(f"(0000,{element:04X}) is not one US value")
    return struct.unpack("<H", value)[0]


def _text(fields: dict[int, bytes], element: int) -> str:
    value = fields[element].decode("iso8859")
    if "\\" in value:
        raise NotPlain(f"(0000,{element:04X}) has several values")
    return value


def store_request(fields: dict[int, bytes]) -> C_STORE:
    """The C-STORE-RQ primitive pynetdicom would build from these command elements."""
    if not REQUEST_REQUIRED <= fields.keys() <= REQUEST_ELEMENTS:
        raise NotPlain("not a plain C-STORE-RQ")
    if _us(fields, 0x0100) != C_STORE_RQ or _us(fields, 0x0800) == NO_DATA_SET:
        raise NotPlain("not a C-STORE-RQ with a data set")
    try:
        primitive = C_STORE()
        primitive.AffectedSOPClassUID = _text(fields, 0x0002).rstrip("\0 ")
        primitive.MessageID = _us(fields, 0x0110)
        primitive.Priority = _us(fields, 0x0700)
        primitive.AffectedSOPInstanceUID = _text(fields, 0x1000).rstrip("\0 ")
        if 0x1030 in fields:
            primitive.MoveOriginatorApplicationEntityTitle = _text(fields, 0x1030).strip()
        if 0x1031 in fields:
            primitive.MoveOriginatorMessageID = _us(fields, 0x1031)
    except (ValueError, TypeError) as exc:
        raise NotPlain(str(exc)) from exc
    return primitive


def store_response(fields: dict[int, bytes]) -> C_STORE:
    """The C-STORE-RSP primitive pynetdicom would build from these command elements."""
    if not RESPONSE_REQUIRED <= fields.keys() <= RESPONSE_ELEMENTS:
        raise NotPlain("not a plain C-STORE-RSP")
    if _us(fields, 0x0100) != C_STORE_RSP or _us(fields, 0x0800) != NO_DATA_SET:
        raise NotPlain("not a C-STORE-RSP")
    try:
        primitive = C_STORE()
        if 0x0002 in fields:
            primitive.AffectedSOPClassUID = _text(fields, 0x0002).rstrip("\0 ")
        primitive.MessageIDBeingRespondedTo = _us(fields, 0x0120)
        primitive.Status = _us(fields, 0x0900)
        if 0x1000 in fields:
            primitive.AffectedSOPInstanceUID = _text(fields, 0x1000).rstrip("\0 ")
    except (ValueError, TypeError) as exc:
        raise NotPlain(str(exc)) from exc
    return primitive


class IncomingDataSet:
    """A received data set being written to its Part-10 file, fragment by fragment."""

    def __init__(self, primitive: C_STORE, context_id: int, transfer_syntax: str, files: ReceivedFiles):
        self.primitive = primitive
        self.context_id = context_id
        self.error: str | None = None
        self.file = None
        self.path = None
        self.size = 0
        self.submitted = 0  # the size when writeback was last started
        self.checksum = new_checksum()
        self.files = files
        try:
            self.path, self.file = files.take()
            self._write(
                PREAMBLE
                + encode_file_meta(
                    FileMetaValues(
                        str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID), str(transfer_syntax)
                    )
                )
            )
        except OSError as exc:
            self._fail(exc)

    def write(self, fragment, last: bool) -> None:
        """Append a fragment; before the last one, start writing the file out so the final fsync waits less."""
        self.write_part(fragment)
        self.end_fragment(last)

    def write_part(self, data) -> None:
        """Append part of a fragment (after a write error: discard it)."""
        if self.error is None:
            try:
                self._write(data)
            except OSError as exc:
                self._fail(exc)

    def write_parts(self, parts: list) -> None:
        """Append several parts at once (one ``writev`` to a file; after a write error: discard them)."""
        if self.error is None:
            try:
                self._write_many(parts)
            except OSError as exc:
                self._fail(exc)

    def end_fragment(self, last: bool) -> None:
        """A fragment is complete: unless it was the last, start writing the file out, once
        :data:`WRITEBACK_STEP` bytes have come since the last time (a peer sending small PDUs
        would otherwise cost a system call, over the whole file, per 16 KB fragment)."""
        if self.error is None and not last and self.size - self.submitted >= WRITEBACK_STEP:
            self.submitted = self.size
            try:
                start_writeback(self.file.fileno())
            except OSError as exc:
                self._fail(exc)

    def finish(self) -> C_STORE:
        """Hand over the primitive with the file still open (for the handler to fsync without
        opening it again; see :func:`take_received_file`) and ``_received_size`` its length.
        pynetdicom, or :mod:`router.engine.store_scp`, closes and unlinks the file after the
        handler unless the handler took it."""
        primitive = self.primitive
        primitive._context_id = self.context_id
        primitive.DataSet = BytesIO()
        primitive._dataset_path = self.path
        primitive._dataset_file = self.file  # None (no file could be made) makes pynetdicom's clean-up skip it
        primitive._received_size = self.size
        primitive._received_checksum = self.checksum.hexdigest()
        if self.error is not None:
            primitive._receive_error = self.error
        return primitive

    def discard(self) -> None:
        close_and_remove(self.path, self.file)

    def _write(self, data) -> None:
        view = memoryview(data)
        self.size += len(view)
        self.checksum.update(view)
        while view:
            view = view[self.file.write(view) :]

    def _write_many(self, parts: list) -> None:
        if not isinstance(self.file, FileIO):
            for part in parts:
                self._write(part)
            return
        for part in parts:
            self.size += len(part)
            self.checksum.update(part)
        fd = self.file.fileno()
        while parts:
            written = os.writev(fd, parts[:IOV_MAX])
            parts = _after(parts, written)

    def _fail(self, exc: OSError) -> None:
        self.error = f"cannot write the received data set: {exc}"
        self.discard()


def _after(parts: list, written: int) -> list:
    """What of ``parts`` is left once ``written`` bytes of them were written."""
    for index, part in enumerate(parts):
        if written < len(part):
            return [part[written:], *parts[index + 1 :]]
        written -= len(part)
    return []


def take_received_file(request: C_STORE):
    """Detach the received data set's open file from ``request`` and return it (None if there is none).

    Neither pynetdicom nor :mod:`router.engine.store_scp` then closes or removes the file
    after the handler: the caller owns it, closes it, and removes it unless it keeps it.
    ``request._dataset_path`` (the event's ``dataset_path``) still names it.
    """
    file, request._dataset_file = request._dataset_file, None
    return file


def _sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_STEP = 1024 * 1024


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages now (Linux; elsewhere a no-op)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def _receive_primitive(self, primitive: P_DATA) -> None:
    """pynetdicom's ``receive_primitive`` with the fast path for plain C-STOREs in front."""
    if getattr(self, "_incoming_data_set", None) is None and (
        self.message is not None or self.assoc.get_handlers(evt.EVT_DIMSE_RECV)
    ):
        _stock_receive_primitive(self, primitive)
        return
    pdvs = primitive.presentation_data_value_list
    for index, (context_id, data) in enumerate(pdvs):
        incoming: IncomingDataSet | None = getattr(self, "_incoming_data_set", None)
        if incoming is not None:
            if not _continue_data_set(self, incoming, data):
                return
        elif data[0] & 3 != 3 or not _take_command(self, context_id, data):
            if index:
                primitive = P_DATA()
                primitive._presentation_data_value_list = pdvs[index:]
            _stock_receive_primitive(self, primitive)
            return


def _continue_data_set(self, incoming: IncomingDataSet, data) -> bool:
    """Write one data set fragment; queue the request after the last. False if the peer broke the protocol."""
    if data[0] & 1:
        log.error(
            "a command fragment arrived inside a C-STORE data set; aborting the association",
            **association_fields(self.dul.assoc),
        )
        self._incoming_data_set = None
        incoming.discard()
        self.dul.event_queue.put("Evt19")
        return False
    incoming.write(memoryview(data)[1:], last=bool(data[0] & 2))
    if data[0] & 2:
        complete_data_set(self, incoming)
    return True


def complete_data_set(dimse, incoming: IncomingDataSet) -> None:
    """The last fragment is written: serve the request on this thread when it can be
    (:mod:`router.engine.store_scp`), else queue it for the association thread."""
    dimse._incoming_data_set = None
    request = incoming.finish()
    if not store_scp.answer(dimse, incoming.context_id, request):
        dimse.msg_queue.put((incoming.context_id, request))
    incoming.files.refill()


def _take_command(self, context_id: int, data) -> bool:
    """Decode a whole command set the fast way; False leaves it to pynetdicom."""
    try:
        fields = parse_command_set(memoryview(data)[1:])
        if fields.get(0x0100) == _RSP_FIELD:
            response = store_response(fields)
            response._context_id = context_id
            self.msg_queue.put((context_id, response))
            return True
        context = self.assoc._accepted_cx.get(context_id)
        if context is None:
            return False
        request = store_request(fields)
        self._incoming_data_set = IncomingDataSet(
            request, context_id, context.transfer_syntax[0], received_files_of(self.assoc)
        )
        return True
    except NotPlain:
        return False


_RSP_FIELD = struct.pack("<H", C_STORE_RSP)


def release_files(dul) -> None:
    """At the end of an association: remove the partial file of a data set cut short."""
    dimse = dul.assoc.dimse
    incoming, dimse._incoming_data_set = getattr(dimse, "_incoming_data_set", None), None
    if incoming is not None:
        incoming.discard()


def install_fast_store_decode() -> None:
    RouterDIMSE.receive_primitive = _receive_primitive
    on_reactor_exit(release_files)
