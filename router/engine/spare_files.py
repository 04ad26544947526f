"""Where received data sets are written: empty files made ahead by a background thread (owned code).

Creating a file costs 0.1-0.7 ms on ext4 here, more in a directory where many files were
just deleted (as a spool's are). Made by an association's socket thread, it either sat
between a command and its data set or held the interpreter lock while the handler wanted
it. A :class:`SpareFiles` keeps a few empty files ready, made by a thread of its own that
mostly waits in the system call, outside the lock. The thread is asked for more once half
of them are used and a received data set has been answered (while the association waits
for the peer's next request), or when none is left.

Nothing here is process-wide: a spool owns its :class:`SpareFiles` (made with its own maker,
in a spool directory whose entries it fsyncs before handing them out, so a received
instance is spooled where it was written: no rename and no directory fsync before its
acknowledgement), and hands it to the objects that receive instances: the DIMSE endpoints'
application entities (:class:`router.engine.application_entity.RouterAE`) and the STOW-RS
endpoints. A spare removed meanwhile (a sweep) is thrown away; when none is ready, the
caller gets a new file in the :class:`ReceivedFiles`' folder.
"""

from __future__ import annotations

import collections
import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from io import FileIO
from typing import Protocol

Maker = Callable[[int], list[tuple[str, FileIO]]]
"""Makes up to ``count`` (at least one) empty files; returns their paths and open files, or raises OSError."""


class ReceivedFiles(Protocol):
    """Where an association or a request writes the data sets it receives."""

    directory: str
    """The folder of the files :meth:`take` makes when no spare is ready."""

    def take(self) -> tuple[str, FileIO | SpillingFile]:
        """A new empty file, open for writing: its path and the file."""

    def refill(self) -> None:
        """A moment to make files ahead, if this kind does."""


def create_empty(directory: str) -> tuple[str, FileIO]:
    """A new empty file, readable and writable by the owner only, open for writing."""
    path = os.path.join(directory, uuid.uuid4().hex + ".dcm")
    return path, open(path, "xb", buffering=0, opener=_private)


def _private(path, flags):
    return os.open(path, flags, 0o600)


class FolderFiles:
    """New files in ``directory``, made when asked for."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)

    def take(self) -> tuple[str, FileIO]:
        return create_empty(self.directory)

    def refill(self) -> None:
        pass


class SpillingFile:
    """A received data set kept in memory up to ``limit`` bytes; past that, written on to a new
    file at ``path`` (made then), so a large one never sits in memory. :attr:`data` is what
    was kept while it did not spill. ``fileno()`` spills it (a file descriptor means a file)."""

    def __init__(self, path: str, limit: int):
        self.path = path
        self.limit = limit
        self.buffer = bytearray()
        self.file: FileIO | None = None

    @property
    def spilled(self) -> bool:
        return self.file is not None

    @property
    def data(self) -> bytes:
        return bytes(self.buffer)

    def write(self, data) -> int:
        if self.file is None and len(self.buffer) + len(data) <= self.limit:
            self.buffer += data
            return len(data)
        return self._spill().write(data) or 0

    def fileno(self) -> int:
        return self._spill().fileno()

    def close(self) -> None:
        """Close the file it spilled to (which stays); what was in memory goes."""
        self.buffer = bytearray()
        if self.file is not None:
            self.file.close()

    def _spill(self) -> FileIO:
        if self.file is None:
            self.file = open(self.path, "xb", buffering=0, opener=_private)
            view = memoryview(self.buffer)
            while view:
                view = view[self.file.write(view) or 0 :]
            self.buffer = bytearray()
        return self.file


class MemoryFirstFiles:
    """Received data sets kept in memory up to ``limit`` bytes each (:class:`SpillingFile`),
    larger ones in new files in ``directory``: for instances passed on at once and never
    spooled (a WADO-RS answer fetched by C-GET)."""

    def __init__(self, directory: str | os.PathLike, limit: int):
        self.directory = os.fspath(directory)
        self.limit = limit

    def take(self) -> tuple[str, FileIO | SpillingFile]:
        path = os.path.join(self.directory, uuid.uuid4().hex + ".dcm")
        return path, SpillingFile(path, self.limit)

    def refill(self) -> None:
        pass


def received_files_in_temporary_directory() -> FolderFiles:
    """For an application entity the router did not make (tests, tools): the process's temporary directory."""
    return FolderFiles(tempfile.gettempdir())


class SpareFiles:
    """Up to ``depth`` empty files kept ready by ``maker``; new ones in ``directory`` when none is."""

    def __init__(self, maker: Maker, directory: str | os.PathLike, depth: int = 8):
        self.maker = maker
        self.directory = os.fspath(directory)
        self.depth = depth
        self._ready: collections.deque[tuple[str, FileIO]] = collections.deque()
        self._wanted = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self) -> tuple[str, FileIO]:
        """A ready spare, else a new file in ``directory``."""
        return self.take_ready() or create_empty(self.directory)

    def take_ready(self) -> tuple[str, FileIO] | None:
        """A ready spare, or None; asks for more only once none is left (:meth:`refill` is for a
        moment when the caller waits anyway)."""
        try:
            while True:
                try:
                    path, file = self._ready.popleft()
                except IndexError:
                    return None
                if os.fstat(file.fileno()).st_nlink:
                    return path, file
                close_and_remove(path, file)
        finally:
            if not self._ready:
                self._want_more()

    def give_back(self, path: str, fd: int) -> bool:
        """Take back, emptied, a spare whose data set is no longer wanted (an instance replaced
        by its edited version), open through a new descriptor of ``fd``'s open file; the caller
        still closes its own. False (the caller removes the file) when ``depth`` are ready or the
        spares are closed. Emptied in place, the file needs no unlink now and no new file, nor its
        directory's fsync, later."""
        if self._closed or len(self._ready) >= self.depth:
            return False
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            file = open(os.dup(fd), "wb", buffering=0)
        except OSError:
            return False
        self._ready.append((path, file))
        if self._closed:
            self.discard_all()
        return True

    def refill(self) -> None:
        """Ask the thread for spares up to ``depth`` once half of them are used."""
        if len(self._ready) <= self.depth // 2:
            self._want_more()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ready_paths(self) -> set[str]:
        return {path for path, _ in list(self._ready)}

    def close(self) -> None:
        """Make no more spares and remove the ready ones (the spool is closing)."""
        self._closed = True
        self._wanted.set()
        self.discard_all()

    def discard_all(self) -> None:
        """Remove every ready spare."""
        while True:
            try:
                path, file = self._ready.popleft()
            except IndexError:
                return
            close_and_remove(path, file)

    def _want_more(self) -> None:
        if self._closed or self.depth == 0:
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._make, name="spare-files", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def _make(self) -> None:
        """Make spares up to ``depth`` each time more are wanted, until closed."""
        while not self._closed:
            self._wanted.wait()
            self._wanted.clear()
            while not self._closed and len(self._ready) < self.depth:
                try:
                    made = self.maker(self.depth - len(self._ready))
                except OSError:
                    break
                if self._closed:
                    for path, file in made:
                        close_and_remove(path, file)
                    return
                self._ready.extend(made)


def close_and_remove(path, file) -> None:
    """Close ``file`` and remove ``path``, either of which may be None; a file already gone is fine."""
    if file is not None:
        file.close()
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
