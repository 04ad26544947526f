"""Spool files on disk.

Layout under the data directory::

    incoming/          partial files of instances received the stock pynetdicom way, and of
                       edited versions being written
    objects/XX/*.dcm   received instances, durable once acknowledged; empty ones are spares
                       (:meth:`Spool.make_spares`) or instances being received; beside them
                       transcoded versions (``*.dcm.<syntax>``) and the copies delivery writes
                       of edited versions kept by reference (``*.dcm.edit<n>.dcm``)
    orphans/*.dcm      non-empty spool files no queue row named at start-up (never deleted:
                       ``dicom-router queue adopt`` queues them again)
    reuse/*.dcm        emptied files of delivered instances, made spares again (:meth:`Spool.recycle`)
    queue.db           the delivery queue (see :mod:`router.spool.queue`)
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from io import FileIO
from pathlib import Path
from typing import BinaryIO, NamedTuple

import structlog

from router.engine.spare_files import SpareFiles, close_and_remove, create_empty
from router.spool.checksum import ChecksummingWriter
from router.spool.edited_copies import is_edited_copy
from router.spool.encoded_versions import write_edited
from router.spool.variants import remove_variants, variant_base

log = structlog.get_logger("router.spool")

SHARDS = 256
REUSE_LIMIT = 1024
"""At most about this many emptied files wait in ``reuse/``; past it, delivered files are removed."""
REUSE_CHECK_EVERY = 256


class WrittenVersion(NamedTuple):
    path: Path
    checksum: str
    entry_durable: bool  # its directory entry is durable already: make_durable need not fsync the directory
    file: BinaryIO | None  # still open, for make_durable to fsync through (the file may be delivered and
    # removed before that); the caller closes it


class Spool:
    def __init__(self, data_dir: Path, min_free_space_mb: int = 0):
        self.data_dir = Path(data_dir)
        self.incoming = self.data_dir / "incoming"
        self.objects = self.data_dir / "objects"
        self.orphans = self.data_dir / "orphans"
        self.reuse = self.data_dir / "reuse"
        self.queue_path = self.data_dir / "queue.db"
        self.min_free_bytes = min_free_space_mb * 1024 * 1024
        self._directory_fds: dict[str, int] = {}
        self._spare_shard = 0
        self._recycled = 0
        self._reuse_full = False
        self.spares = SpareFiles(self.make_spares, self.incoming)

    def prepare(self) -> None:
        """Create the layout, receive into spares made by :meth:`make_spares`, and otherwise into
        ``incoming/`` (same filesystem as ``objects/``)."""
        for d in (self.data_dir, self.incoming, self.objects, self.reuse):
            d.mkdir(parents=True, exist_ok=True)
        for shard in range(SHARDS):
            (self.objects / f"{shard:02x}").mkdir(exist_ok=True)
        if self.spares.closed:  # prepared again after close()
            self.spares = SpareFiles(self.make_spares, self.incoming)

    def make_spares(self, count: int) -> list[tuple[str, FileIO]]:
        """``count`` empty files to receive instances into, in the next shard of ``objects/``,
        with the shard directory fsynced once they exist: an instance received into one is
        spooled where it is (see :meth:`adopt`). Left behind by a crash, they are removed at the
        next start (no queue row names them).

        Files waiting in ``reuse/`` are moved in first (emptied again on opening), new ones
        made only for the rest: on ext4, creating a file where many were deleted in the last
        minutes costs several times more than renaming one (docs/performance.md)."""
        self._spare_shard = (self._spare_shard + 1) % SHARDS
        shard = os.path.join(self.objects, f"{self._spare_shard:02x}")
        made: list[tuple[str, FileIO]] = []
        try:
            made += self._reused(shard, count)
            while len(made) < count:
                made.append(create_empty(shard))
            fsync_dir(shard)
        except OSError:
            for path, file in made:
                close_and_remove(path, file)
            raise
        return made

    def _reused(self, shard: str, count: int) -> list[tuple[str, FileIO]]:
        """Up to ``count`` files of ``reuse/`` moved into ``shard``, open and empty. Another
        process of the router may take the same file first: it is then skipped."""
        taken: list[tuple[str, FileIO]] = []
        try:
            with os.scandir(self.reuse) as entries:
                for entry in entries:
                    if len(taken) >= count:
                        break
                    if not entry.is_file(follow_symlinks=False):
                        continue  # not one the router put there
                    target = os.path.join(shard, entry.name)
                    try:
                        os.rename(entry.path, target)
                    except FileNotFoundError:
                        continue
                    taken.append((target, open(target, "wb", buffering=0)))
        except FileNotFoundError:
            pass
        except OSError:
            for path, file in taken:
                close_and_remove(path, file)
            raise
        return taken

    def recycle(self, path: Path | str) -> None:
        """Empty a spool file no delivery needs any more and move it to ``reuse/``, where
        :meth:`make_spares` takes it again (while fewer than about :data:`REUSE_LIMIT` wait
        there; else it is removed). Its data must have no reader left: unlike a removed file,
        an emptied one is empty for whoever still has it open."""
        if self._reuse_is_full():
            self.discard(path)
            return
        try:
            os.truncate(path, 0)
        except FileNotFoundError:
            return
        except OSError:
            self.discard(path)
            return
        try:
            os.rename(path, os.path.join(self.reuse, os.path.basename(path)))
        except OSError:
            self.discard(path)

    def _reuse_is_full(self) -> bool:
        """Whether ``reuse/`` holds :data:`REUSE_LIMIT` files, counted once every :data:`REUSE_CHECK_EVERY` calls."""
        if self._recycled % REUSE_CHECK_EVERY == 0:
            self._reuse_full = _count_up_to(self.reuse, REUSE_LIMIT) >= REUSE_LIMIT
        self._recycled += 1
        return self._reuse_full

    def adopt(self, received: Path | str) -> tuple[Path, bool]:
        """Take a fully received file into the spool; not yet durable.

        Returns its spool path, and whether its directory entry is durable already: a file
        received into a spare of :meth:`make_spares` stays where it is (True); any other is
        moved into a shard (False: :meth:`make_durable` must fsync the directory too).
        """
        received = os.fspath(received)
        if os.path.dirname(os.path.dirname(received)) == os.fspath(self.objects):
            return Path(received), True
        name = uuid.uuid4().hex
        target = self.objects / name[:2] / f"{name}.dcm"
        os.replace(received, target)
        return target, False

    def write_version(self, instance, directory: Path | None = None) -> WrittenVersion:
        """Write an edited version of a spooled instance (header edited, pixel data spliced); not yet
        durable. Returns its path, checksum, whether its directory entry is durable already and,
        unless ``directory`` was given, the file still open (to fsync through).

        It goes into ``objects/`` unless ``directory`` says otherwise: into a ready spare of
        :meth:`make_spares` when there is one (no file to create, no directory to fsync, as for
        a received instance), else to a temporary name renamed into a shard. A crash mid-write
        leaves a file no queue row names, removed at the next start.
        """
        spare = self.spares.take_ready() if directory is None else None
        if spare is not None:
            path, file = spare
            writer = ChecksummingWriter(file)
            try:
                write_edited(instance, writer)
            except BaseException:
                close_and_remove(path, file)
                raise
            return WrittenVersion(Path(path), writer.checksum, True, file)
        name = uuid.uuid4().hex
        target = (directory or self.objects / name[:2]) / f"{name}.dcm"
        tmp = self.incoming / f"{name}.part"
        out = open(tmp, "wb")
        try:
            writer = ChecksummingWriter(out)
            write_edited(instance, writer)
            out.flush()
            os.replace(tmp, target)
        except BaseException:
            close_and_remove(tmp, out)
            raise
        if directory is not None:
            out.close()
            return WrittenVersion(target, writer.checksum, False, None)
        return WrittenVersion(target, writer.checksum, False, out)

    def make_durable(self, path: Path | str, fd: int | None = None, entry_durable: bool = False) -> None:
        """fsync the file (through ``fd`` if it is open there) and, unless ``entry_durable``, the
        directory entry that names it."""
        if fd is not None:
            os.fsync(fd)
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if not entry_durable:
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
        """Remove the spares made for this spool; close the directory descriptors kept for fsyncs
        (they are opened again if needed)."""
        self.spares.close()
        fds, self._directory_fds = self._directory_fds, {}
        for fd in fds.values():
            os.close(fd)

    def discard(self, path: Path | str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def discard_instance(self, path: Path | str) -> None:
        """Let go of a spool file no delivery needs any more (:meth:`recycle`; an edited version's
        copy is removed), and remove its transcoded versions."""
        if is_edited_copy(os.path.basename(path)):
            self.discard(path)
        else:
            self.recycle(path)
        remove_variants(path)

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
        """At start-up: remove the empty spool files no queue row names (spares, or receptions
        a crash cut short), transcoded versions whose instance no row names and those a crash
        cut short (``.part``), and every copy of an edited version kept by reference (delivery
        writes them again; one a power cut caught may not be whole); move other non-empty files
        to ``orphans/`` with a warning.
        Returns how many files were moved or removed.

        A non-empty file no row names may be an acknowledged instance whose row was lost
        (the queue database damaged or restored from a backup): it is never deleted.
        ``dicom-router queue adopt`` puts such files back in the queue.
        """
        removed, orphaned = 0, []
        for shard in self.objects.iterdir():
            if not shard.is_dir():
                continue
            for entry in os.scandir(shard):
                if is_edited_copy(entry.name):
                    os.unlink(entry.path)
                    continue
                if entry.path in referenced:
                    continue
                if entry.name.endswith(".part"):  # a transcoded version a crash cut short
                    os.unlink(entry.path)
                    continue
                base = variant_base(entry.name)
                if base is not None:  # a transcoded version: kept while its instance is
                    if os.path.join(shard, base) not in referenced:
                        os.unlink(entry.path)
                    continue
                if entry.stat().st_size == 0:
                    os.unlink(entry.path)
                    removed += 1
                    continue
                self.orphans.mkdir(exist_ok=True)
                os.replace(entry.path, self.orphans / entry.name)
                orphaned.append(entry.name)
        if orphaned:
            fsync_dir(self.orphans)
            log.warning(
                "moved spool files no queue row names to orphans/ (run `dicom-router queue adopt`)",
                count=len(orphaned),
                orphans=str(self.orphans),
                files=orphaned[:20],
            )
        if removed:
            log.info("removed empty spool files no delivery needs", count=removed)
        self._trim_reuse()
        return removed + len(orphaned)

    def _trim_reuse(self) -> None:
        """At start-up: no more than :data:`REUSE_LIMIT` files in ``reuse/``."""
        try:
            with os.scandir(self.reuse) as entries:
                files = [entry.path for entry in entries if entry.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for path in files[REUSE_LIMIT:]:
            self.discard(path)

    def adopt_orphan(self, path: Path) -> Path:
        """Move a file from ``orphans/`` back into a shard of ``objects/``, durably."""
        target = self.objects / path.name[:2] / path.name
        if not target.parent.is_dir():
            target = self.objects / "00" / path.name
        os.replace(path, target)
        self.make_durable(target)
        fsync_dir(self.orphans)
        return target


def _count_up_to(directory: Path, limit: int) -> int:
    """How many entries ``directory`` holds, counting no further than ``limit`` (0 if it is missing)."""
    count = 0
    try:
        with os.scandir(directory) as entries:
            for _ in entries:
                count += 1
                if count >= limit:
                    break
    except FileNotFoundError:
        pass
    return count


def fsync_dir(directory: Path | str) -> None:
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
