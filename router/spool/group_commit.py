"""Group commit: concurrent writers of one process share a transaction, and so one WAL fsync.

With several senders at once, each intake thread used to take SQLite's write lock in turn
(retrying ``BEGIN IMMEDIATE`` while another held it) and pay its own durable commit. Here a
writer that finds no commit in progress commits at once, alone: a single sender waits on
nobody. Writers that arrive while a commit is in progress wait for it; when it ends, the
first of them commits all their writes together and wakes the others.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, TypeVar, cast

T = TypeVar("T")

Apply = Callable[[sqlite3.Connection], T]


class _Write(Generic[T]):
    __slots__ = ("apply", "done", "result", "error")

    def __init__(self, apply: Apply):
        self.apply = apply
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.result)


class GroupCommit:
    """Runs ``apply(conn)`` of concurrent callers inside shared transactions.

    ``transaction()`` opens one (``BEGIN IMMEDIATE`` ... ``COMMIT``) on the calling thread's
    connection and yields it. In a shared transaction each write runs inside its own
    savepoint, so a write that raises is undone alone and its caller alone gets the error;
    a failed ``COMMIT`` is every caller's error, as none of their writes is then committed.
    """

    def __init__(self, transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]):
        self._transaction = transaction
        self._changed = threading.Condition()
        self._waiting: list[_Write] = []
        self._committing = False
        self.commits = 0
        self.writes = 0

    def run(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``apply`` in a committed transaction, alone or with other callers'; return its result."""
        write: _Write[T] = _Write(apply)
        with self._changed:
            self._waiting.append(write)
            while self._committing and not write.done:
                self._changed.wait()
            if write.done:
                return write.outcome()
            self._committing = True
            group, self._waiting = self._waiting, []
        try:
            self._commit(group)
        except BaseException as exc:
            for other in group:
                if not other.done:
                    other.error, other.done = exc, True
        finally:
            with self._changed:
                self._committing = False
                self.commits += 1
                self.writes += len(group)
                self._changed.notify_all()
        return write.outcome()

    def _commit(self, group: list[_Write]) -> None:
        if len(group) == 1:
            with self._transaction() as conn:
                group[0].result = group[0].apply(conn)
            group[0].done = True
            return
        with self._transaction() as conn:
            for write in group:
                _apply_in_savepoint(conn, write)
        for write in group:
            write.done = True


def _apply_in_savepoint(conn: sqlite3.Connection, write: _Write) -> None:
    conn.execute("SAVEPOINT group_write")
    try:
        write.result = write.apply(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO group_write")
        write.error = exc
    conn.execute("RELEASE group_write")
