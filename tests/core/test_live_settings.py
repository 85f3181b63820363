"""Settings changed while the engine runs apply at once, with no restart: jobs at once
(a running queue grows and shrinks its slots) and the poll interval. Engines against
the loopback simulator on a clock the test moves: jobs stay running until it says."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from nbdesk.core.engine import Engine
from nbdesk.core.jobs import Job, JobSpec, JobState
from nbdesk.sim.server import ManualClock
from tests.helpers import EngineEnv, close_engine

pytestmark = pytest.mark.anyio

FRAME = JobSpec(provider="apiframe", model="nano-banana", prompt="a slow lighthouse")


class Watch:
    """The engine's events, and a way to wait until they say something (no sleeping)."""

    def __init__(self, engine: Engine) -> None:
        self.log: list[tuple[str, JobState]] = []
        self._changed = asyncio.Event()
        engine.subscribe(self._on_job)

    def _on_job(self, job: Job) -> None:
        self.log.append((job.id, job.state))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def started(self) -> set[str]:
        """Jobs that left the queue: each took one of the provider's slots."""
        return {i for i, state in self.log if state is not JobState.QUEUED}

    def reached(self, state: JobState) -> set[str]:
        return {i for i, s in self.log if s is state}

    def first_start(self, job_id: str) -> int:
        """Where in the log the job left the queue."""
        return next(n for n, (i, s) in enumerate(self.log)
                    if i == job_id and s is not JobState.QUEUED)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(15):
            while not condition():
                await self._changed.wait()


@pytest.fixture
def clock(engine_env: EngineEnv) -> Iterator[ManualClock]:
    clock = ManualClock()
    engine_env.sim.clock = clock  # (the sim's job_seconds is 0.2: done at +0.2 s)
    yield clock


async def test_jobs_at_once_grows_and_shrinks_without_a_restart(
    engine_env: EngineEnv, clock: ManualClock
) -> None:
    engine = engine_env.engine()
    service = engine.connector.settings_service
    service.update(concurrency=1)
    watch = Watch(engine)
    slots = engine.slots("apiframe")
    try:
        await engine.start()
        a, b, c, d = (job.id for job in await engine.enqueue(FRAME, 4))

        # jobs at once = 1: one job at the provider, three waiting for a slot
        await watch.until(lambda: a in watch.reached(JobState.SUBMITTED))
        await asyncio.wait_for(slots.until(lambda s: s.waiting == 3), 15)
        assert slots.running == 1 and watch.started() == {a}

        # raised to 3 (saved from a worker thread, as the settings dialog does): two
        # waiting jobs start at once, the fourth keeps waiting
        clock.advance(0.1)
        await asyncio.to_thread(service.update, concurrency=3)
        await watch.until(lambda: {b, c} <= watch.reached(JobState.SUBMITTED))
        assert watch.started() == {a, b, c}
        assert (slots.limit, slots.running, slots.waiting) == (3, 3, 1)

        # lowered to 1: the three running jobs carry on...
        service.update(concurrency=1)
        assert (slots.limit, slots.running, slots.waiting) == (1, 3, 1)
        clock.advance(0.15)  # a is done at the provider, b and c are not
        await watch.until(lambda: a in watch.reached(JobState.COMPLETED))
        # a gave its slot back
        await asyncio.wait_for(slots.until(lambda s: s.running + s.waiting == 3), 15)
        # ...and the slot a freed starts nothing: two still run, above the new limit
        assert (slots.running, slots.waiting) == (2, 1)
        assert d not in watch.started()

        clock.advance(0.1)  # b and c done: only then, with none running, d starts
        await watch.until(lambda: d in watch.reached(JobState.SUBMITTED))
        assert {b, c} <= watch.reached(JobState.COMPLETED)
        assert watch.first_start(d) > max(watch.log.index((b, JobState.COMPLETED)),
                                    watch.log.index((c, JobState.COMPLETED)))
        clock.advance(1.0)
        jobs = await asyncio.wait_for(engine.wait([a, b, c, d]), 15)
    finally:
        await close_engine(engine)
    assert [j.state for j in jobs] == [JobState.COMPLETED] * 4
    assert engine_env.sim.stats.submits["apiframe"] == 4  # each sent once


async def test_a_shorter_poll_interval_applies_to_a_job_already_waiting(
    engine_env: EngineEnv, clock: ManualClock
) -> None:
    engine_env.sim.config.queue_seconds = 0.0  # the first poll already says "running"
    engine = engine_env.engine(poll_interval=60.0)  # the longest the settings allow
    service = engine.connector.settings_service
    watch = Watch(engine)
    try:
        await engine.start()
        (job,) = await engine.enqueue(FRAME)
        # RUNNING is reported by the first poll; the engine then waits 60 s for the next
        await watch.until(lambda: job.id in watch.reached(JobState.RUNNING))
        polls = engine_env.sim.stats.polls["apiframe"]
        clock.advance(1.0)  # done at the provider
        service.update(poll_interval=0.2)
        # the waiting poll measured its wait again: the job completes in well under 60 s
        (job,) = await asyncio.wait_for(engine.wait([job.id]), 10)
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    assert engine.config.poll_interval == 0.2
    assert engine_env.sim.stats.polls["apiframe"] == polls + 1
