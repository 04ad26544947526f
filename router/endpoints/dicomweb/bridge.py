"""Run a blocking generator (the query/retrieve proxies) on a worker thread and consume its items
on the event loop, with a bounded number in between.

The producer waits while ``capacity`` items are not yet taken, so a client that reads slowly
slows the upstreams instead of filling memory. :meth:`ThreadedStream.stop` (the request ended,
the client left, enough results) makes :meth:`cancelled` true for the generator's own
cancellation check and lets the producer thread finish.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

END = object()
WAIT_SECONDS = 0.05


class ThreadedStream:
    def __init__(self, loop: asyncio.AbstractEventLoop, executor: Executor, capacity: int = 64):
        self.loop = loop
        self.executor = executor
        self._slots = threading.Semaphore(capacity)
        self._stopped = threading.Event()
        self._items: asyncio.Queue = asyncio.Queue()
        self._done: asyncio.Future | None = None

    def cancelled(self) -> bool:
        return self._stopped.is_set()

    def start(self, make: Callable[[Callable[[], bool]], Iterator[Any]]) -> None:
        """Run ``make(cancelled)`` and feed what it yields; an exception it raises comes out of :meth:`next`."""
        self._done = self.loop.run_in_executor(self.executor, self._produce, make)

    def _produce(self, make) -> None:
        try:
            for item in make(self.cancelled):
                while not self._slots.acquire(timeout=WAIT_SECONDS):
                    if self._stopped.is_set():
                        return
                if self._stopped.is_set():
                    return
                self.loop.call_soon_threadsafe(self._items.put_nowait, item)
        except BaseException as exc:
            self.loop.call_soon_threadsafe(self._items.put_nowait, _Failure(exc))
        finally:
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self._items.put_nowait, END)

    async def next(self) -> Any:
        """The next item, or :data:`END`."""
        item = await self._items.get()
        if item is not END:
            self._slots.release()
        if isinstance(item, _Failure):
            raise item.exc
        return item

    def leftovers(self) -> list[Any]:
        """Items produced but never taken (call after :meth:`stop`), for their owner to release."""
        items = []
        while not self._items.empty():
            item = self._items.get_nowait()
            if item is not END and not isinstance(item, _Failure):
                items.append(item)
        return items

    async def stop(self) -> None:
        """Stop the producer and wait for its thread to return."""
        self._stopped.set()
        if self._done is not None:
            await asyncio.shield(self._done)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc
