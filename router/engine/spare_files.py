"""Empty files for received data sets, made ahead by a background thread (owned code).

Creating a file costs 0.1-0.7 ms on ext4 here, more in a directory where many files were
just deleted (as a spool's are). Made by an association's socket thread, it either sat
between a command and its data set or held the interpreter lock while the handler wanted
it. :data:`SPARES` keeps a few empty files ready, made by a thread of its own that mostly
waits in the system call, outside the lock. The thread is asked for more once half of them
are used and a received data set has been answered (while the association waits for the
peer's next request), or when none is left.

Where they are made: by default one at a time in the temporary directory; a spool hands
its own maker to :meth:`SpareFiles.keep_in` (the spool's makes them in batches in a spool
directory whose entries it fsyncs before handing them out, so a received instance is
spooled where it was written: no rename and no directory fsync before its acknowledgement).
A spare from another maker or temporary directory (a router restarted in the same process)
or removed meanwhile (a sweep) is thrown away; when none is ready, the caller makes its
own file in the temporary directory.
"""

from __future__ import annotations

import collections
import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from io import FileIO

Maker = Callable[[int], list[tuple[str, FileIO]]]
"""Makes up to ``count`` (at least one) empty files; returns their paths and open files, or raises OSError."""


def create_empty(directory: str) -> tuple[str, FileIO]:
    """A new empty file, readable and writable by the owner only, open for writing."""
    path = os.path.join(directory, uuid.uuid4().hex + ".dcm")
    return path, open(path, "xb", buffering=0, opener=_private)


def _private(path, flags):
    return os.open(path, flags, 0o600)


class SpareFiles:
    """Up to ``depth`` empty files kept ready, made by the current maker."""

    def __init__(self, depth: int = 8):
        self.depth = depth
        self._ready: collections.deque[tuple[Maker | str, str, FileIO]] = collections.deque()
        self._maker: Maker | None = None
        self._wanted_from: Maker | str | None = None
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep_in(self, maker: Maker | None) -> None:
        """Make spares with ``maker`` from now on (None: one at a time in the temporary directory)."""
        self._maker = maker

    def stop_keeping_in(self, maker: Maker) -> None:
        """If ``maker`` is the current maker: remove the ready spares and go back to the temporary directory."""
        if self._maker == maker:
            self._maker = None
            self.discard_all()

    def take(self) -> tuple[str, FileIO] | None:
        """A ready spare from the current maker, or None; asks for more only once none is left
        (:meth:`refill` is for a moment when the caller waits anyway)."""
        source = self._source()
        try:
            while True:
                try:
                    made_by, path, file = self._ready.popleft()
                except IndexError:
                    return None
                if made_by == source and os.fstat(file.fileno()).st_nlink:
                    return path, file
                close_and_remove(path, file)
        finally:
            if not self._ready:
                self._want_more()

    def refill(self) -> None:
        """Ask the thread for spares up to ``depth`` once half of them are used."""
        if len(self._ready) <= self.depth // 2:
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
        self._wanted_from = self._source()
        self._wanted.set()

    def _source(self) -> Maker | str:
        """The current maker, or the temporary directory when there is none."""
        return self._maker or tempfile.gettempdir()

    def _make(self) -> None:
        """Make spares up to ``depth`` each time more are wanted, while the maker (or temporary
        directory) stays the one current when they were asked for."""
        while True:
            self._wanted.wait()
            self._wanted.clear()
            source = self._wanted_from
            while len(self._ready) < self.depth and self._source() == source:
                try:
                    made = source(self.depth - len(self._ready)) if callable(source) else [create_empty(source)]
                except OSError:
                    break
                self._ready.extend((source, path, file) for path, file in made)


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
