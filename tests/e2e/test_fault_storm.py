"""Tried as a new user on a bad day: a quarter of all requests fail.

Twenty jobs across both providers (two ``nbdesk generate --count 10`` runs at once, on
one library) against a simulator that answers 25 % of requests with a fault: 429 / 500 /
503, a reset connection, a slow answer, a truncated or malformed body. Then the storm
passes and the user retries what needs retrying, once each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nbdesk.core.jobs import JobState
from nbdesk.sim import Faults, Simulator
from tests.e2e.harness import Cli

MakeSim = Callable[..., Simulator]
MakeCli = Callable[..., Cli]

COUNT = 10
STORM = dict(rate=0.25, retry_after=0.05, slow_seconds=0.2)


def _storm(seed: int, make_sim: MakeSim, make_cli: MakeCli) -> None:
    sim = make_sim(queue_seconds=0.1, job_seconds=0.5, faults=Faults(seed=seed, **STORM))
    cli = make_cli(sim)

    runs = {p: cli.start("generate", f"storm over {p}", "--provider", p, "--count", str(COUNT),
                         "--json") for p in ("apiframe", "apifree")}
    frame, free = (cli.finish(runs[p], timeout=120) for p in ("apiframe", "apifree"))
    sim.config.faults = Faults()  # the storm passes; what follows is the user cleaning up

    # Apiframe: retried with its idempotency key through everything; one paid job each.
    assert frame.code == 0, frame.describe()
    recs = frame.records()
    assert len(recs) == COUNT, frame.describe()
    assert {r["status"] for r in recs} == {"completed"}, frame.describe()
    stats = sim.stats.snapshot()
    assert stats["submits"]["apiframe"] == COUNT
    frame_remote = sorted(r["remote_id"] for r in recs)
    assert sorted(j["remote_id"] for j in stats["jobs"] if j["provider"] == "apiframe") \
        == frame_remote

    # APIFree: no idempotency key, so a submit whose answer was lost is never resent blindly.
    recs = free.records()
    assert len(recs) == COUNT, free.describe()
    interrupted = sorted(r["id"] for r in recs if r["status"] == "interrupted")
    assert {r["status"] for r in recs} <= {"completed", "interrupted"}, free.describe()
    assert free.code == (1 if interrupted else 0), free.describe()
    for i in interrupted:
        assert cli.library.job(i).error_kind == "unanswered"

    # The user retries each interrupted job once: one new paid submission each.
    if interrupted:
        retried = cli.run("retry", *interrupted, "--yes", "--json", timeout=120)
        assert retried.code == 0, retried.describe()
        assert sorted(r["id"] for r in retried.records()) == interrupted
        assert {r["status"] for r in retried.records()} == {"completed"}

    jobs = cli.jobs()
    assert len(jobs) == 2 * COUNT
    assert all(j.state is JobState.COMPLETED for j in jobs), [j.state for j in jobs]
    stats = sim.stats.snapshot()
    assert stats["submits"]["apiframe"] == COUNT
    free_jobs = [j for j in stats["jobs"] if j["provider"] == "apifree"]
    unanswered = [j for j in free_jobs if not j["answered"]]
    # Paid APIFree jobs: one per completed job, plus each submit whose answer was lost.
    assert stats["submits"]["apifree"] == COUNT + len(unanswered)
    ours = {j.remote_id for j in jobs if j.provider == "apifree"}
    assert {j["remote_id"] for j in free_jobs if j["answered"]} == ours
    assert len(unanswered) <= len(interrupted)

    # The library is whole.
    assert cli.library.verify() == []
    assert cli.library.tmp_files() == []
    for job in jobs:
        [item] = cli.library.items_for_job(job.id)
        assert Path(item.path).is_file()

    injected = {k: v for k, v in stats["faults"].items() if v}
    assert sum(injected.values()) > 0
    print(f"fault storm (seed {seed}): {sum(injected.values())} faults in "
          f"{stats['requests']} requests: " + ", ".join(f"{k} {v}" for k, v in injected.items())
          + f"; apifree interrupted {len(interrupted)}, unanswered {len(unanswered)}; "
          f"apiframe replays {stats['replays']}")


def test_fault_storm_as_a_new_user(make_sim: MakeSim, make_cli: MakeCli) -> None:
    _storm(int(os.environ.get("NBDESK_STORM_SEED", "20240611")), make_sim, make_cli)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 9))
def test_fault_storm_many_seeds(seed: int, make_sim: MakeSim, make_cli: MakeCli) -> None:
    _storm(seed, make_sim, make_cli)
