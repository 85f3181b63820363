"""The engine's slot limiter: its limit changes while places are taken, and a job
cancelled while waiting (or just as it got a place) never keeps one."""

from __future__ import annotations

import asyncio

import pytest

from nbdesk.core.slots import Slots

pytestmark = pytest.mark.anyio


async def taken(slots: Slots, n: int) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(slots.acquire()) for _ in range(n)]
    await asyncio.wait_for(slots.until(lambda s: s.running + s.waiting == n), 5)
    return tasks


async def test_a_waiter_cancelled_keeps_no_place() -> None:
    slots = Slots(1)
    first, second, third = await taken(slots, 3)
    assert (slots.running, slots.waiting) == (1, 2)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert slots.waiting == 1
    slots.release()  # the first one's place goes to the third, not to the cancelled one
    await asyncio.wait_for(third, 5)
    assert first.done() and (slots.running, slots.waiting) == (1, 0)


async def test_a_place_handed_to_a_task_cancelled_at_once_is_passed_on() -> None:
    slots = Slots(1)
    _first, second, third = await taken(slots, 3)
    slots.release()  # handed to the second...
    second.cancel()  # ...cancelled before it could run: the place goes on to the third
    await asyncio.gather(second, return_exceptions=True)
    await asyncio.wait_for(third, 5)
    assert (slots.running, slots.waiting) == (1, 0)


async def test_raising_the_limit_starts_waiters_in_order() -> None:
    slots = Slots(1)
    tasks = await taken(slots, 4)
    slots.limit = 3
    assert [t.done() for t in tasks[:3]] == [True, False, False]  # handed, not yet run
    await asyncio.wait_for(asyncio.gather(*tasks[:3]), 5)
    assert not tasks[3].done() and (slots.running, slots.waiting) == (3, 1)
    tasks[3].cancel()
    await asyncio.gather(tasks[3], return_exceptions=True)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_limit_below_one_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(bad)  # type: ignore[arg-type]
    slots = Slots(2)
    with pytest.raises(ValueError, match="at least 1"):
        slots.limit = bad  # type: ignore[assignment]
    assert slots.limit == 2
