"""What a file costs the spool: created where many files were just deleted, emptied and rewritten, renamed.

Run by hand (never in CI):

    python benchmarks/file_churn.py [--files 2000] [--dir /tmp/dicom-router-churn]

Creates ``--files`` files of 9 KB (a small instance) in a fresh directory, removes them,
creates as many again beside them, then empties and rewrites those, then renames them; prints
microseconds per file for each step. On ext4 a file created where many inodes were freed in
the last minutes costs several times a first one (the inode allocator skips recently freed
inodes when the file system has no journal, as on this machine): the reason the spool reuses
delivered files (``router/spool/store.py``, ``Spool.recycle``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import uuid

PAYLOAD = b"x" * 9000


def create(directory: str, count: int) -> tuple[float, list[str]]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    start = time.perf_counter()
    for _ in range(count):
        path = os.path.join(directory, uuid.uuid4().hex)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, PAYLOAD)
        os.close(fd)
        paths.append(path)
    return (time.perf_counter() - start) / count * 1e6, paths


def timed(paths: list[str], step) -> float:
    start = time.perf_counter()
    for path in paths:
        step(path)
    return (time.perf_counter() - start) / len(paths) * 1e6


def rewrite(path: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    os.ftruncate(fd, 0)
    os.write(fd, PAYLOAD)
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--dir", default="/tmp/dicom-router-churn")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    first, paths = create(os.path.join(args.dir, "a"), args.files)
    removed = timed(paths, os.unlink)
    after, paths = create(os.path.join(args.dir, "a"), args.files)  # where the removed ones were
    emptied = timed(paths, rewrite)
    renamed = timed(paths, lambda p: os.rename(p, p + ".r"))
    print(f"create (first) {first:.0f} us, remove {removed:.0f} us, create after removals {after:.0f} us, ")
    print(f"empty and rewrite {emptied:.0f} us, rename {renamed:.0f} us per file")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
