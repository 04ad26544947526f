"""Empty files for received data sets, made ahead by a background thread (owned code).

Creating a file costs 0.1-0.7 ms on ext4 here, more in a directory where many files were
just deleted (as a spool's are). Made by an association's socket thread, it either sat
between a command and its data set or held the interpreter lock while the handler wanted
it. :data:`SPARES` keeps a few empty files ready in the temporary directory (the spool's
``incoming/``), made by a thread of its own that mostly waits in the system call, outside
the lock. The thread is asked for more once a received data set has been answered (while
the association waits for the peer's next request), or when none is left. A spare made
for another temporary directory (a router restarted in the same process) or removed
meanwhile (the hourly sweep of old partial files) is thrown away; when none is ready, the
caller makes its own file.
"""

from __future__ import annotations

import collections
import os
import tempfile
import threading
import uuid
from io import FileIO


def create_empty(directory: str) -> tuple[str, FileIO]:
    """A new empty file, readable and writable by the owner only, open for writing."""
    path = os.path.join(directory, uuid.uuid4().hex + ".dcm")
    return path, open(path, "xb", buffering=0, opener=_private)


def _private(path, flags):
    return os.open(path, flags, 0o600)


class SpareFiles:
    """Up to ``depth`` empty files kept ready in the temporary directory of the latest :meth:`take`."""

    def __init__(self, depth: int = 4):
        self.depth = depth
        self._ready: collections.deque[tuple[str, str, FileIO]] = collections.deque()
        self._directory = tempfile.gettempdir()
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self) -> tuple[str, FileIO] | None:
        """A ready spare for the current temporary directory, or None; asks for more only once
        none is left (:meth:`refill` is for a moment when the caller waits anyway)."""
        self._directory = directory = tempfile.gettempdir()
        try:
            while True:
                try:
                    made_in, path, file = self._ready.popleft()
                except IndexError:
                    return None
                if made_in == directory and os.fstat(file.fileno()).st_nlink:
                    return path, file
                close_and_remove(path, file)
        finally:
            if not self._ready:
                self._want_more()

    def refill(self) -> None:
        """Ask the thread to make spares up to ``depth`` again."""
        if len(self._ready) < self.depth:
            self._want_more()

    def discard_all(self) -> None:
        """Remove every ready spare (the router is stopping)."""
        while True:
            try:
                _, path, file = self._ready.popleft()
            except IndexError:
                return
            close_and_remove(path, file)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's spares (their files are the parent's) and its thread."""
        self._ready = collections.deque()
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    def _want_more(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._make, name="spare-files", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def _make(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.depth:
                directory = self._directory
                try:
                    path, file = create_empty(directory)
                except OSError:
                    break
                self._ready.append((directory, path, file))


def close_and_remove(path, file) -> None:
    """Close ``file`` and remove ``path``, either of which may be None; a file already gone is fine."""
    if file is not None:
        file.close()
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


SPARES = SpareFiles()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=SPARES.forget_after_fork)
