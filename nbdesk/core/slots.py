"""A limit on how many jobs run at once that can change while they run.

``asyncio.Semaphore`` fixes its size when it is made; the user's "jobs at once" setting
must apply to a running queue. ``Slots`` hands out places first come, first served:

* raising the limit starts waiting jobs at once (as many as the new limit allows);
* lowering it takes no place back: the jobs running finish, and no new one starts until
  fewer than the new limit run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from types import TracebackType


class Slots:
    def __init__(self, limit: int) -> None:
        self._limit = _checked(limit)
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._changed = asyncio.Event()

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = _checked(value)
        self._hand_out()
        self._signal()

    @property
    def running(self) -> int:
        """Places taken now (more than ``limit`` for a while after it was lowered)."""
        return self._held

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> None:
        if self._held < self._limit and not self.waiting:
            self._held += 1
            self._signal()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._signal()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # given a place just as it was cancelled: pass it on
            else:
                self._drop(waiter)
            raise

    def release(self) -> None:
        if self._held <= 0:
            raise RuntimeError("Slots.release() without a place taken")
        self._held -= 1
        self._hand_out()
        self._signal()

    async def until(self, condition: Callable[[Slots], bool]) -> None:
        """Wait until ``condition(self)`` holds (checked after every change): for a view
        of the queue, and for tests that watch the limit at work without sleeping."""
        while not condition(self):
            await self._changed.wait()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _hand_out(self) -> None:
        while self._held < self._limit and self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while waiting
                continue
            self._held += 1
            waiter.set_result(None)

    def _drop(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # handed out and dropped already
            self._waiters.remove(waiter)
        self._signal()

    def _signal(self) -> None:
        # Wake everyone watching; the next change needs a fresh event.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _checked(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"a slot limit must be a whole number of at least 1, not {limit!r}")
    return limit
