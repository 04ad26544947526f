"""Spool files on disk.

Layout under the data directory::

    incoming/          partial files while an instance is being received
    objects/XX/*.dcm   received instances, durable once acknowledged
    queue.db           the delivery queue (see :mod:`router.spool.queue`)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import structlog

from router.spool.splice import write_spliced

log = structlog.get_logger("router.spool")


class Spool:
    def __init__(self, data_dir: Path, min_free_space_mb: int = 0):
        self.data_dir = Path(data_dir)
        self.incoming = self.data_dir / "incoming"
        self.objects = self.data_dir / "objects"
        self.queue_path = self.data_dir / "queue.db"
        self.min_free_bytes = min_free_space_mb * 1024 * 1024
        self._directory_fds: dict[str, int] = {}

    def prepare(self) -> None:
        """Create the layout and receive into ``incoming/`` (same filesystem as ``objects/``)."""
        for d in (self.data_dir, self.incoming, self.objects):
            d.mkdir(parents=True, exist_ok=True)
        for shard in range(256):
            (self.objects / f"{shard:02x}").mkdir(exist_ok=True)
        tempfile.tempdir = str(self.incoming)

    def adopt(self, received: Path | str) -> Path:
        """Move a fully received temporary file into the spool; not yet durable."""
        name = uuid.uuid4().hex
        shard = self.objects / name[:2]
        target = shard / f"{name}.dcm"
        os.replace(received, target)
        return target

    def write_version(self, instance, directory: Path | None = None) -> Path:
        """Write an edited version of a spooled instance (header edited, pixel data spliced); not yet durable.

        It goes into ``objects/`` unless ``directory`` says otherwise.
        """
        name = uuid.uuid4().hex
        target = (directory or self.objects / name[:2]) / f"{name}.dcm"
        tmp = self.incoming / f"{name}.part"
        try:
            with open(tmp, "wb") as out:
                write_spliced(instance.path, instance.header, instance.layout, out)
            os.replace(tmp, target)
        except BaseException:
            self.discard(tmp)
            raise
        return target

    def make_durable(self, path: Path, fd: int | None = None) -> None:
        """fsync the file (through ``fd`` if it is open there) and the directory entry that names it."""
        if fd is not None:
            os.fsync(fd)
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._fsync_dir(os.path.dirname(path))

    def _fsync_dir(self, directory: str) -> None:
        """fsync a directory through a descriptor kept open for it (one per shard, opened once)."""
        fd = self._directory_fds.get(directory)
        if fd is None:
            opened = os.open(directory, os.O_RDONLY)
            fd = self._directory_fds.setdefault(directory, opened)
            if fd != opened:  # another thread opened it meanwhile
                os.close(opened)
        os.fsync(fd)

    def close(self) -> None:
        """Close the directory descriptors kept for fsyncs (they are opened again if needed)."""
        fds, self._directory_fds = self._directory_fds, {}
        for fd in fds.values():
            os.close(fd)

    def discard(self, path: Path | str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def free_bytes(self) -> int:
        st = os.statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize

    def has_free_space(self) -> bool:
        return self.min_free_bytes <= 0 or self.free_bytes() >= self.min_free_bytes

    def sweep_incoming(self, older_than_seconds: float = 0.0) -> int:
        """Remove partial files left by aborted transfers; returns how many."""
        removed = 0
        cutoff = time.time() - older_than_seconds
        for entry in os.scandir(self.incoming):
            try:
                if entry.is_file() and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("swept partial transfers", count=removed, directory=str(self.incoming))
        return removed

    def sweep_unreferenced(self, referenced: set[str]) -> int:
        """Remove spool files no queue row points to (a crash between commit and unlink)."""
        removed = 0
        for shard in self.objects.iterdir():
            if not shard.is_dir():
                continue
            for entry in os.scandir(shard):
                if entry.path not in referenced:
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            log.info("removed spool files no delivery needs", count=removed)
        return removed


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_durably(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically: a temporary file, fsync, rename, fsync the directory."""
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(dst.parent)
