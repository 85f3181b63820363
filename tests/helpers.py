"""Shared test helpers and fixtures (registered from conftest.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from nbdesk.api.http import RetryPolicy, make_client
from nbdesk.sim import SimConfig, Simulator
from nbdesk.sim.server import ManualClock

SimClock = ManualClock


class FakeSleep:
    """Stands in for asyncio.sleep in retry policies: records delays, never waits."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)

    @property
    def total(self) -> float:
        return sum(self.calls)


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def policy(fake_sleep: FakeSleep) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(42), sleep=fake_sleep)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(queue_seconds=0.05, job_seconds=0.2)) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = make_client(timeout=10.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def sim_clock(sim: Simulator) -> ManualClock:
    """Time as the simulator sees it, advanced by the test (no sleeping)."""
    clock = ManualClock()
    sim.clock = clock
    return clock
