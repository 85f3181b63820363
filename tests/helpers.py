"""Shared test helpers and fixtures (registered from conftest.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from nbdesk.api.http import RetryPolicy, make_client
from nbdesk.demo import start_demo
from nbdesk.sim import SimConfig, Simulator
from nbdesk.sim.server import ManualClock

SimClock = ManualClock

if TYPE_CHECKING:
    from nbdesk.core.engine import Engine


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


# ------------------------------------------------------------------ engine fixtures


class EngineEnv:
    """A library in a temp NBDESK_HOME, a simulator, and a factory for engines on them."""

    def __init__(self, home: Path, sim: Simulator) -> None:
        from nbdesk.core.library import Library
        from nbdesk.core.paths import Paths

        self.home = home
        self.sim = sim
        self.env = {
            "NBDESK_HOME": str(home),
            "NBDESK_APIFRAME_API_KEY": "frame-test-key-123",
            "NBDESK_APIFREE_API_KEY": "free-test-key-456",
            "NBDESK_APIFRAME_BASE_URL": sim.base_url,
            "NBDESK_APIFREE_BASE_URL": sim.base_url,
            "NBDESK_GEMINI_API_KEY": "gemini-test-key-789",
            "NBDESK_GEMINI_BASE_URL": sim.base_url,
        }
        self.paths = Paths.resolve(self.env)
        self.library = Library(self.paths)
        self.events: list[tuple[str, str]] = []

    def engine(self, **config: object) -> Engine:
        from nbdesk.core.connector import Connector
        from nbdesk.core.engine import Engine, EngineConfig
        from nbdesk.core.secrets import SecretStore
        from nbdesk.core.settings import Settings

        http = make_client(timeout=10.0)
        secrets = SecretStore(environ=self.env)
        fast = RetryPolicy(base=0.01, cap=0.05, rng=random.Random(3))
        connector = Connector(
            http, secrets, Settings(), env=self.env,
            policy_factory=lambda: RetryPolicy(base=0.01, cap=0.05, rng=random.Random(5)),
            demo=partial(start_demo, SimConfig(queue_seconds=0.05, job_seconds=0.2)),
        )
        defaults: dict[str, object] = dict(poll_interval=0.03, scan_interval=0.05, retry=fast)
        defaults.update(config)
        engine = Engine(self.library, connector, EngineConfig(**defaults))  # type: ignore[arg-type]
        engine.subscribe(lambda job: self.events.append((job.id, job.state.value)))
        return engine

    def states(self, job_id: str) -> list[str]:
        seen: list[str] = []
        for jid, state in self.events:
            if jid == job_id and (not seen or seen[-1] != state):
                seen.append(state)
        return seen


async def close_engine(engine: Engine) -> None:
    await engine.stop()
    await engine.connector.close()
    await engine.connector.http.aclose()


@pytest.fixture
def engine_env(tmp_path: Path, sim: Simulator) -> Iterator[EngineEnv]:
    env = EngineEnv(tmp_path / "home", sim)
    try:
        yield env
    finally:
        env.library.close()


# ------------------------------------------------------------------ waiting on other processes
# (imported here, not at the top: this section is appended to a file others edit)

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import TypeVar  # noqa: E402

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.02
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Only for watching progress that no event in this process reports (another process's
    database writes): a short poll with a hard deadline. Raises AssertionError naming
    ``what`` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
