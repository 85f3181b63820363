"""Crash safety, proven with SIGKILL.

A ``nbdesk generate --count N`` process is killed with SIGKILL (no cleanup runs) at a
chosen moment; ``nbdesk resume`` then finishes the work. Whatever the moment:

* no paid submission is made twice: Apiframe (idempotency key) resumes every job and the
  simulator counts exactly one paid job per job; APIFree (no key) resumes every job that
  had its answer and marks *interrupted* only a job whose submit was in flight at the
  kill, and ``nbdesk retry`` completes it;
* the library is consistent: ``Library.verify()`` finds nothing (integrity check, every
  file's SHA-256, no stray files), the tmp folder is empty, every completed job has its
  image file.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbdesk.core.jobs import Job, JobState
from nbdesk.sim import Faults, Simulator
from tests.e2e.harness import FAST_SETTINGS, Cli
from tests.helpers import wait_until

MakeSim = Callable[..., Simulator]
MakeCli = Callable[..., Cli]

N = 6  # jobs per trial
CONCURRENCY = 4  # jobs worked at once: with N > CONCURRENCY some are still queued at a kill
SETTINGS = {**FAST_SETTINGS, "concurrency": CONCURRENCY}
HOLD = 2.0  # seconds the simulator holds a scripted "slow" request open
PROVIDERS = ["apiframe", "apifree"]


@dataclass
class Trial:
    provider: str
    sim: Simulator
    cli: Cli
    proc: subprocess.Popen[bytes]

    @property
    def idempotent(self) -> bool:
        return self.provider == "apiframe"

    def kill(self, *, may_have_ended: bool = False) -> list[Job]:
        """SIGKILL the generate run; the jobs as the dead process left them."""
        self.cli.kill(self.proc)
        assert self.proc.returncode in ((-9, 0) if may_have_ended else (-9,))
        return self.cli.jobs()

    def slow_held(self, count: int) -> None:
        """Wait until the simulator holds ``count`` scripted slow requests open."""
        wait_until(lambda: self.sim.stats.snapshot()["faults"]["slow"] >= count, 15,
                   f"the simulator to hold {count} requests open")


def _trial(make_sim: MakeSim, make_cli: MakeCli, provider: str, *,
           job_seconds: float = 0.6, script: tuple[str, int] | None = None) -> Trial:
    sim = make_sim(queue_seconds=0.1, job_seconds=job_seconds,
                   faults=Faults(slow_seconds=HOLD))
    if script is not None:
        route, count = script
        sim.script(route, ["slow"] * count)
    cli = make_cli(sim, settings=SETTINGS)
    proc = cli.start("generate", f"crash trial on {provider}", "--provider", provider,
                     "--count", str(N), "--json")
    return Trial(provider, sim, cli, proc)


def _count(jobs: Sequence[Job], *states: JobState) -> int:
    return sum(j.state in states for j in jobs)


def _resume_and_check(trial: Trial, at_kill: Sequence[Job], planted: Path | None = None) -> None:
    """Resume after the kill; check every promise of the module docstring."""
    cli, sim = trial.cli, trial.sim
    if not at_kill:
        # Killed before its jobs were written (they are written in one transaction):
        # nothing to resume, nothing was sent.
        res = cli.run("resume", "--json")
        assert (res.code, res.stdout) == (0, ""), res.describe()
        assert cli.jobs() == []
        assert sim.stats.snapshot()["requests"] == 0
        _check_library(cli, [])
        return
    assert len(at_kill) == N
    in_flight = {j.id for j in at_kill if j.state is JobState.SUBMITTING}

    res = cli.run("resume", "--json")

    jobs = {j.id: j for j in cli.jobs()}
    assert len(jobs) == N
    reported = {r["id"]: r for r in res.records()}
    unfinished = {j.id for j in at_kill if j.state.active}
    assert set(reported) == unfinished, res.describe()  # every unfinished job was taken up
    for job in jobs.values():
        assert job.lease_owner is None, job
        assert reported.get(job.id, {}).get("status", job.state.value) == job.state.value

    stats = sim.stats.snapshot()
    if trial.idempotent:
        assert res.code == 0, res.describe()
        assert all(j.state is JobState.COMPLETED for j in jobs.values()), res.describe()
        # The one promise that costs money: one paid job per job, replays are free.
        assert stats["submits"]["apiframe"] == N, stats
    else:
        interrupted = {i for i, j in jobs.items() if j.state is JobState.INTERRUPTED}
        completed = {i for i, j in jobs.items() if j.state is JobState.COMPLETED}
        assert interrupted | completed == set(jobs), res.describe()
        # Interrupted only where a submit was in flight when the process died.
        assert interrupted <= in_flight, (interrupted, in_flight)
        assert res.code == (1 if interrupted else 0), res.describe()
        for i in interrupted:
            assert jobs[i].remote_id is None and jobs[i].error_kind == "unanswered"
        if interrupted:
            retried = cli.run("retry", *sorted(interrupted), "--yes", "--json")
            assert retried.code == 0, retried.describe()
            assert {r["id"] for r in retried.records()} == interrupted
            jobs = {j.id: j for j in cli.jobs()}
            assert all(j.state is JobState.COMPLETED for j in jobs.values())
        stats = sim.stats.snapshot()
        known = {j.remote_id for j in jobs.values()}
        orphans = [r for r in stats["jobs"] if r["remote_id"] not in known]
        # Each job paid once, plus at most one lost submit per interrupted job.
        assert stats["submits"]["apifree"] == N + len(orphans), stats["submits"]
        assert len(orphans) <= len(interrupted)

    remote_ids = [j.remote_id for j in jobs.values()]
    assert len(set(remote_ids)) == N and None not in remote_ids
    _check_library(cli, jobs.values())
    if planted is not None:
        assert not planted.exists()


def _check_library(cli: Cli, jobs: Iterable[Job]) -> None:
    assert cli.library.verify() == []
    assert cli.library.tmp_files() == []
    for job in jobs:
        items = cli.library.items_for_job(job.id)
        assert len(items) == 1, job
        assert items[0].path.is_file()
        assert items[0].size == items[0].path.stat().st_size


# ---------------------------------------------------------------------------- the moments


@pytest.mark.parametrize("provider", PROVIDERS)
def test_kill_while_submitting(provider: str, make_sim: MakeSim, make_cli: MakeCli) -> None:
    # The simulator holds the first submits open: the jobs sit in "submitting".
    trial = _trial(make_sim, make_cli, provider, script=(f"{provider}.submit", CONCURRENCY))
    trial.cli.wait_for_jobs(
        lambda js: _count(js, JobState.SUBMITTING) == CONCURRENCY, 20,
        f"{CONCURRENCY} jobs in state submitting", trial.proc)
    trial.slow_held(CONCURRENCY)  # ... and their requests have reached the provider

    at_kill = trial.kill()

    assert _count(at_kill, JobState.SUBMITTING) == CONCURRENCY
    assert _count(at_kill, JobState.QUEUED) == N - CONCURRENCY
    _resume_and_check(trial, at_kill)
    if not trial.idempotent:
        # Each held submit went through at the provider after the kill: the APIFree jobs
        # whose answer was lost are exactly the interrupted ones (then retried).
        wait_until(lambda: trial.sim.stats.snapshot()["submits"]["apifree"]
                   == N + CONCURRENCY, 10, "the held submits to be created")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_kill_once_remote_ids_are_written(
    provider: str, make_sim: MakeSim, make_cli: MakeCli
) -> None:
    trial = _trial(make_sim, make_cli, provider, job_seconds=1.5)
    want = random.Random(f"remote-ids-{provider}").randint(1, CONCURRENCY)
    trial.cli.wait_for_jobs(
        lambda js: sum(j.remote_id is not None for j in js) >= want, 20,
        f"{want} remote ids written", trial.proc)

    at_kill = trial.kill()

    with_ids = [j for j in at_kill if j.remote_id is not None]
    assert len(with_ids) >= want
    assert all(j.state in (JobState.SUBMITTED, JobState.RUNNING) for j in with_ids), at_kill
    _resume_and_check(trial, at_kill)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_kill_while_downloading(provider: str, make_sim: MakeSim, make_cli: MakeCli) -> None:
    trial = _trial(make_sim, make_cli, provider, script=("download", CONCURRENCY))
    trial.cli.wait_for_jobs(
        lambda js: _count(js, JobState.DOWNLOADING) == CONCURRENCY, 20,
        f"{CONCURRENCY} jobs in state downloading", trial.proc)
    trial.slow_held(CONCURRENCY)

    at_kill = trial.kill()

    downloading = [j for j in at_kill if j.state is JobState.DOWNLOADING]
    assert len(downloading) == CONCURRENCY
    assert all(j.result_urls for j in downloading)
    # A kill in the middle of writing a body leaves a partial temp file behind; plant one
    # (the simulator holds the body back, so this kill left none) for resume to clear.
    planted = trial.cli.library.tmp_path(downloading[0].id, 0)
    planted.write_bytes(b"\x89PNG\r\n\x1a\n half an image")
    _resume_and_check(trial, at_kill, planted)
    assert trial.sim.stats.snapshot()["submits"][provider] == N  # downloads never resubmit


# ---------------------------------------------------------------------------- any moment


def _random_kill(seed: int, make_sim: MakeSim, make_cli: MakeCli) -> None:
    rng = random.Random(seed)
    provider = PROVIDERS[seed % 2]
    trial = _trial(make_sim, make_cli, provider)
    delay = rng.uniform(0.6, 2.6)
    try:
        trial.proc.wait(timeout=delay)  # the seeded moment (or the run finished before it)
    except subprocess.TimeoutExpired:
        at_kill = trial.kill(may_have_ended=True)  # it may finish in the same instant
    else:
        at_kill = trial.cli.jobs()
    print(f"seed {seed}: {provider}, kill at {delay:.2f} s: "
          + ", ".join(f"{s.value} {_count(at_kill, s)}" for s in JobState if _count(at_kill, s)))
    _resume_and_check(trial, at_kill)


@pytest.mark.parametrize("seed", [7])
def test_kill_at_a_seeded_random_moment(
    seed: int, make_sim: MakeSim, make_cli: MakeCli
) -> None:
    _random_kill(seed, make_sim, make_cli)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 110))
def test_kill_at_many_seeded_random_moments(
    seed: int, make_sim: MakeSim, make_cli: MakeCli
) -> None:
    _random_kill(seed, make_sim, make_cli)
