"""Crash trials: a process working 20 paid jobs is SIGKILLed, then started again.

Each trial runs ``nbdesk generate --count 20`` (the CLI) or the desktop app (through
``tests/reliability/app_driver.py``) against the loopback simulator in this process, and
kills it with SIGKILL — no cleanup handler runs — at one of these moments:

* while the database shows jobs in a state: submitting, submitted, running, downloading
  (the simulator holds the requests of that state open, so the kill lands inside it);
* at a failpoint (``NBDESK_FAILPOINT=name@N``, the N-th time, so several jobs are done):
  the image written to its temp file, the image renamed into place, inside the database
  transaction that completes the job, the submit answered but its remote id not written;
* at a seeded random moment.

Then ``nbdesk resume`` (or the app, which resumes on start) finishes the work, and every
trial checks the promise — no paid image is lost, none is paid twice:

* every job is completed; only an APIFree job whose submit was unanswered at the kill may
  be interrupted instead, and ``nbdesk retry`` then completes it;
* the simulator counts one paid Apiframe submission per Apiframe job, and no APIFree
  submission beyond one per job plus one lost answer per interrupted job;
* no temp or partial file is left, no stray image; ``PRAGMA integrity_check`` is ok and
  every image's SHA-256 matches the database (``Library.verify() == []``); every completed
  job has its image file; no lease is left behind.

The app is also closed the normal way with jobs in flight: its next start finishes them
and sends none of them again. Every trial adds its figures to the reliability report.
Two defects found on the way (both fixed) are kept as regression tests at the end.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbdesk.core.jobs import MAX_COUNT, Job, JobState
from nbdesk.sim import Faults, SimConfig, Simulator
from tests.e2e.harness import FAST_SETTINGS, REPO, Cli, Result
from tests.helpers import wait_until
from tests.reliability.conftest import ReliabilityReport

N = MAX_COUNT  # jobs per trial (one `--count`, at most MAX_COUNT)
CONCURRENCY = 5  # jobs a process works at once (per provider): some are queued at a kill
SETTINGS = {**FAST_SETTINGS, "concurrency": CONCURRENCY}
QUEUE_SECONDS = 0.1  # the simulator's time in QUEUED
JOB_SECONDS = 0.4  # ... and from submit to a finished image
HOLD = 2.0  # seconds the simulator holds a scripted "slow" request open
DEADLINE = 30.0  # seconds: the longest wait on another process's progress
RUN_TIMEOUT = 90.0  # seconds: a whole resume / retry / app run

MakeSim = Callable[..., Simulator]


# ---------------------------------------------------------------------------- installations


class Install(Cli):
    """An nbdesk installation (the e2e harness) that also starts the desktop app through
    the app driver, and can set a failpoint for one run."""

    def __init__(self, base: Path, sim: Simulator, **kwargs: Any) -> None:
        super().__init__(base, sim, **kwargs)
        if not self.env.get("QT_QPA_PLATFORM", "").startswith("offscreen"):
            self.env["QT_QPA_PLATFORM"] = "offscreen"
        self._pipes: list[subprocess.Popen[bytes]] = []

    def launch(
        self, argv: Sequence[str], *, failpoint: str | None = None, stdin: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a run in the background like ``Cli.start`` (its output goes to files
        under ``out``, ``finish`` reads it), with NBDESK_FAILPOINT set if given."""
        env = dict(self.env)
        if failpoint is not None:
            env["NBDESK_FAILPOINT"] = failpoint
        self._started += 1
        n = self._started
        with open(self.out / f"{n}.stdout", "wb") as so, open(self.out / f"{n}.stderr", "wb") as se:
            proc = subprocess.Popen(
                list(argv), env=env, cwd=REPO, stdout=so, stderr=se,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
            )
        proc.nbdesk_run = n  # type: ignore[attr-defined]
        self._procs.append(proc)
        if proc.stdin is not None:
            self._pipes.append(proc)
        return proc

    def start_cli(self, *args: str, failpoint: str | None = None) -> subprocess.Popen[bytes]:
        return self.launch(self._argv(args), failpoint=failpoint)

    def start_app(self, *args: str, failpoint: str | None = None) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "tests.reliability.app_driver", *args]
        return self.launch(argv, failpoint=failpoint, stdin=subprocess.PIPE)

    def run_app(self, *args: str) -> Result:
        proc = self.start_app(*args)
        try:
            return self.finish(proc, timeout=RUN_TIMEOUT)
        finally:
            self.close_pipe(proc)

    def quit_app(self, proc: subprocess.Popen[bytes]) -> Result:
        """The user closes the window: the normal way out of the app."""
        assert proc.stdin is not None
        proc.stdin.write(b"close\n")
        proc.stdin.flush()
        try:
            return self.finish(proc, timeout=RUN_TIMEOUT)
        finally:
            self.close_pipe(proc)

    @staticmethod
    def close_pipe(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()

    def close(self) -> None:
        super().close()
        for proc in self._pipes:
            self.close_pipe(proc)


MakeInstall = Callable[[Simulator], Install]


@pytest.fixture
def make_sim() -> Iterator[MakeSim]:
    """``make_sim(**SimConfig fields)``: a started simulator, stopped after the test."""
    started: list[Simulator] = []

    def make(**config: Any) -> Simulator:
        sim = Simulator(SimConfig(**config)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def make_install(tmp_path: Path) -> Iterator[MakeInstall]:
    made: list[Install] = []

    def make(sim: Simulator) -> Install:
        inst = Install(tmp_path / f"user{len(made)}", sim, settings=SETTINGS)
        made.append(inst)
        return inst

    yield make
    for inst in made:
        inst.close()


# ---------------------------------------------------------------------------- one trial


@dataclass
class Trial:
    name: str
    sim: Simulator
    inst: Install
    counts: dict[str, int]  # provider -> jobs
    proc: subprocess.Popen[bytes] | None = None
    kill_key: str | None = None  # what the report counts this kill under
    at_kill: tuple[Job, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def wait_for(self, what: str, predicate: Callable[[list[Job]], bool]) -> list[Job]:
        """Poll the database (the process under trial writes it) until ``predicate``."""
        return self.inst.wait_for_jobs(predicate, DEADLINE, what, self.proc)

    def wait_for_state(self, state: JobState, count: int) -> list[Job]:
        return self.wait_for(f"{count} job(s) in state {state.value}",
                             lambda js: _count(js, state) >= count)

    def all_written(self) -> list[Job]:
        return self.wait_for(f"all {self.total} jobs written", lambda js: len(js) == self.total)

    def held(self, count: int) -> None:
        """Wait until the simulator holds ``count`` scripted slow requests open."""
        wait_until(lambda: self.sim.stats.snapshot()["faults"]["slow"] >= count, DEADLINE,
                   f"the simulator to hold {count} request(s) open")

    def kill(self, key: str) -> list[Job]:
        """SIGKILL the process now; the jobs as it left them."""
        assert self.proc is not None
        self.inst.kill(self.proc)
        assert self.proc.returncode == -signal.SIGKILL, self.inst.finish(self.proc).describe()
        return self._killed(key)

    def died_at_failpoint(self, key: str) -> list[Job]:
        """Wait for the process to SIGKILL itself at its failpoint."""
        assert self.proc is not None
        res = self.inst.finish(self.proc, timeout=RUN_TIMEOUT)
        assert res.code == -signal.SIGKILL, res.describe()  # it did not finish the run
        return self._killed(key)

    def _killed(self, key: str) -> list[Job]:
        self.kill_key = key
        jobs = self.inst.jobs()
        self.at_kill = tuple(jobs)
        print(f"{self.name}: killed at {key}: {_states(jobs)}")
        return jobs


def _count(jobs: Sequence[Job], *states: JobState) -> int:
    return sum(j.state in states for j in jobs)


def _states(jobs: Sequence[Job]) -> str:
    counts = Counter(j.state.value for j in jobs)
    return ", ".join(f"{s.value} {counts[s.value]}" for s in JobState if counts[s.value])


def _trial(
    name: str, make_sim: MakeSim, make_install: MakeInstall, counts: dict[str, int], *,
    job_seconds: float = JOB_SECONDS, script: Sequence[tuple[str, list[str]]] = (),
    hold: float = HOLD,
) -> Trial:
    sim = make_sim(queue_seconds=QUEUE_SECONDS, job_seconds=job_seconds,
                   faults=Faults(slow_seconds=hold))
    for route, outcomes in script:
        sim.script(route, outcomes)
    return Trial(name, sim, make_install(sim), counts)


def _start_generate(trial: Trial, failpoint: str | None = None) -> None:
    (provider, count), = trial.counts.items()
    trial.proc = trial.inst.start_cli(
        "generate", f"crash trial {trial.name}", "--provider", provider, "--count", str(count),
        "--json", failpoint=failpoint)


def _start_app(trial: Trial, failpoint: str | None = None) -> None:
    jobs = [f"--jobs={p}={n}" for p, n in trial.counts.items()]
    trial.proc = trial.inst.start_app("submit", *jobs, "--prompt", f"crash trial {trial.name}",
                                      failpoint=failpoint)


def _resume_cli(trial: Trial) -> None:
    """``nbdesk resume``: it takes up exactly the jobs left unfinished."""
    res = trial.inst.run("resume", "--json", timeout=RUN_TIMEOUT)
    assert res.code in (0, 1), res.describe()
    unfinished = {j.id for j in trial.at_kill if j.state.active}
    reported = {r["id"]: r["status"] for r in res.records()}
    assert set(reported) == unfinished, res.describe()
    interrupted = _check_resumed(trial, res, reported)
    assert res.code == (1 if interrupted else 0), res.describe()


def _resume_app(trial: Trial) -> None:
    """A second start of the app: the engine resumes everything as it starts."""
    res = trial.inst.run_app("resume", "--timeout", str(DEADLINE * 2))
    assert res.code == 0, res.describe()  # 1: jobs were still active at the timeout
    reported = {r["id"]: r["status"] for r in res.records()}
    assert len(reported) == trial.total, res.describe()
    _check_resumed(trial, res, reported)


def _check_resumed(trial: Trial, res: Result, reported: dict[str, str]) -> set[str]:
    """Every job completed or (only where allowed) interrupted; the interrupted ones."""
    jobs = {j.id: j for j in trial.inst.jobs()}
    for job_id, status in reported.items():
        assert jobs[job_id].state.value == status
    interrupted = {i for i, j in jobs.items() if j.state is JobState.INTERRUPTED}
    left = {i: j.state.value for i, j in jobs.items()
            if j.state not in (JobState.COMPLETED, JobState.INTERRUPTED)}
    assert not left, res.describe()
    # Interrupted only: APIFree (no idempotency key), and only a submit in flight at the kill.
    unanswered = {j.id for j in trial.at_kill
                  if j.state is JobState.SUBMITTING and j.provider == "apifree"}
    assert interrupted <= unanswered, (interrupted, unanswered, res.describe())
    for job_id in interrupted:
        assert jobs[job_id].error_kind == "unanswered" and jobs[job_id].remote_id is None
    return interrupted


def _retry_interrupted(trial: Trial) -> set[str]:
    """The user retries each interrupted job once (a new paid submission, by choice)."""
    interrupted = {j.id for j in trial.inst.in_state(JobState.INTERRUPTED)}
    if interrupted:
        res = trial.inst.run("retry", *sorted(interrupted), "--yes", "--json", timeout=RUN_TIMEOUT)
        assert res.code == 0, res.describe()
        assert {r["id"] for r in res.records()} == interrupted, res.describe()
    return interrupted


def _settle(trial: Trial, report: ReliabilityReport, resume: Callable[[Trial], None]) -> None:
    """Resume after the kill, retry what was interrupted, check the promise, report."""
    assert len(trial.at_kill) == trial.total, _states(trial.at_kill)
    resume(trial)
    interrupted = _retry_interrupted(trial)
    inst, stats = trial.inst, trial.sim.stats.snapshot()
    jobs = inst.jobs()

    # The paid submissions: Apiframe exactly one per job (its key makes a resend free);
    # APIFree one per job, plus at most the lost answer of each interrupted job.
    known = {j.remote_id for j in jobs}
    frame_extra = stats["submits"]["apiframe"] - trial.counts.get("apiframe", 0)
    orphans = [r for r in stats["jobs"] if r["remote_id"] not in known]
    free_orphans = [r for r in orphans if r["provider"] == "apifree"]
    duplicates = max(frame_extra, 0) + max(len(free_orphans) - len(interrupted), 0)

    # The library, and the database read afresh (not through the library's connection).
    uri = f"file:{inst.library.paths.db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    problems = inst.library.verify()
    tmp = inst.library.tmp_files()
    strays = [p for p in problems if p.startswith("stray file")]
    lost = [p for p in problems if not p.startswith(("stray file", "integrity_check"))]
    completed = [j for j in jobs if j.state is JobState.COMPLETED]
    no_image = [j.id for j in completed
                if not any(i.path.is_file() for i in inst.library.items_for_job(j.id))]

    with report.lock:
        report.trials += 1
        report.jobs += trial.total
        if trial.kill_key is not None:
            report.kills[trial.kill_key] += 1
        report.duplicates += duplicates
        report.files_lost += len(lost) + len(no_image)
        report.partial_files += len(tmp) + len(strays)
    report.add_faults(stats["faults"])
    print(f"{trial.name}: after resume: {_states(jobs)}; interrupted and retried "
          f"{len(interrupted)}; submits {stats['submits']}, replays {stats['replays']}")

    assert len(jobs) == trial.total
    assert len(completed) == trial.total, _states(jobs)
    assert frame_extra == 0, stats["submits"]
    assert stats["submits"]["apifree"] == trial.counts.get("apifree", 0) + len(free_orphans)
    assert len(free_orphans) <= len(interrupted), (free_orphans, interrupted)
    assert duplicates == 0
    assert None not in known and len(known) == trial.total  # one remote job each
    assert integrity == "ok", integrity
    assert tmp == [], tmp
    assert problems == [], problems  # integrity_check, SHA-256 of every file, no strays
    assert no_image == []
    for job in completed:
        items = inst.library.items_for_job(job.id)
        assert len(items) == 1 and items[0].size == items[0].path.stat().st_size, job
    assert all(j.lease_owner is None for j in jobs), "a lease was left behind"


# ---------------------------------------------------------------------------- the CLI


def _held_in(route: str, before: int) -> list[tuple[str, list[str]]]:
    """``before`` requests on ``route`` go through, the next CONCURRENCY are held open."""
    return [(route, ["ok"] * before + ["slow"] * CONCURRENCY)]


# state -> (the route whose requests hold jobs in it, how many pass first)
STATE_HOLDS = {
    JobState.SUBMITTING: ("submit", CONCURRENCY),  # the second wave's submits
    JobState.SUBMITTED: ("poll", 0),  # the first poll of the first wave
    JobState.DOWNLOADING: ("download", CONCURRENCY),  # the second wave's downloads
}

CLI_STATES = [
    (JobState.SUBMITTING, "apiframe"),
    (JobState.SUBMITTING, "apifree"),
    (JobState.SUBMITTED, "apifree"),
    (JobState.RUNNING, "apiframe"),
    (JobState.DOWNLOADING, "apifree"),
]
MORE_CLI_STATES = [
    (JobState.SUBMITTED, "apiframe"),
    (JobState.RUNNING, "apifree"),
    (JobState.DOWNLOADING, "apiframe"),
]


def _kill_cli_in_state(
    state: JobState, provider: str, make_sim: MakeSim, make_install: MakeInstall,
    report: ReliabilityReport,
) -> None:
    name = f"cli-{state.value}-{provider}"
    if state is JobState.RUNNING:
        # No request to hold: the provider takes its time and the jobs show "running".
        trial = _trial(name, make_sim, make_install, {provider: N}, job_seconds=1.5)
        _start_generate(trial)
        trial.wait_for_state(JobState.RUNNING, 3)
    else:
        kind, before = STATE_HOLDS[state]
        route = "download" if kind == "download" else f"{provider}.{kind}"
        trial = _trial(name, make_sim, make_install, {provider: N},
                       script=_held_in(route, before))
        _start_generate(trial)
        trial.wait_for_state(state, CONCURRENCY)
        trial.held(CONCURRENCY)  # ... and their requests are at the provider

    at_kill = trial.kill(state.value)
    trial.sim.config.job_seconds = JOB_SECONDS  # the resumed jobs need not take that long

    assert _count(at_kill, state) >= (3 if state is JobState.RUNNING else CONCURRENCY)
    assert _count(at_kill, JobState.QUEUED) >= N - 2 * CONCURRENCY  # work was left over
    if state is JobState.DOWNLOADING:
        assert _count(at_kill, JobState.COMPLETED) >= 1  # some were done before it
    _settle(trial, report, _resume_cli)
    if state is not JobState.SUBMITTING:
        assert trial.sim.stats.snapshot()["replays"] == 0  # nothing was even resent


@pytest.mark.parametrize(("state", "provider"), CLI_STATES,
                         ids=[f"{s.value}-{p}" for s, p in CLI_STATES])
def test_cli_killed_inside_a_state(
    state: JobState, provider: str, make_sim: MakeSim, make_install: MakeInstall,
    report: ReliabilityReport,
) -> None:
    _kill_cli_in_state(state, provider, make_sim, make_install, report)


@pytest.mark.slow
@pytest.mark.parametrize(("state", "provider"), MORE_CLI_STATES,
                         ids=[f"{s.value}-{p}" for s, p in MORE_CLI_STATES])
def test_cli_killed_inside_a_state_more(
    state: JobState, provider: str, make_sim: MakeSim, make_install: MakeInstall,
    report: ReliabilityReport,
) -> None:
    _kill_cli_in_state(state, provider, make_sim, make_install, report)


# what the report counts a kill at each failpoint under
FAILPOINT_KILLS = {
    "download.written": "writing the file (download.written)",
    "file.renamed": "writing the file (file.renamed)",
    "db.transaction": "writing the database (db.transaction)",
    "submit.sent": "submit answered, id not written (submit.sent)",
}
# (failpoint, provider, N: the occurrence that kills)
FAILPOINTS = [
    ("download.written", "apiframe", 6),  # writing the file: temp file done, not renamed
    ("file.renamed", "apifree", 6),  # writing the file: in place, its row not written
    ("db.transaction", "apiframe", 6),  # writing the database: inside the transaction
    ("submit.sent", "apifree", 8),  # the submit's answer arrived, its remote id not written
]
MORE_FAILPOINTS = [
    ("download.written", "apifree", 14),
    ("db.transaction", "apifree", 15),
    ("submit.sent", "apiframe", 3),
]


def _kill_cli_at_failpoint(
    point: str, provider: str, nth: int, make_sim: MakeSim, make_install: MakeInstall,
    report: ReliabilityReport,
) -> None:
    trial = _trial(f"cli-{point}@{nth}-{provider}", make_sim, make_install, {provider: N})
    _start_generate(trial, failpoint=f"{point}@{nth}")

    at_kill = trial.died_at_failpoint(FAILPOINT_KILLS[point])

    # The kill landed where the failpoint says, with several jobs done before it.
    lib = trial.inst.library
    completed = _count(at_kill, JobState.COMPLETED)
    if point == "submit.sent":
        # The nth answer is lost, and so may be a few before it whose remote ids were
        # still on their way to the database (it writes on one thread, in order), and
        # those of submits the provider had taken at the same time.
        written = sum(j.remote_id is not None for j in at_kill)
        assert max(nth - CONCURRENCY, 0) <= written <= nth - 1, _states(at_kill)
        assert _count(at_kill, JobState.SUBMITTING) >= nth - written
        assert trial.sim.stats.snapshot()["submits"][provider] >= nth
    else:
        assert nth - 2 * CONCURRENCY <= completed <= nth - 1, _states(at_kill)
        assert completed >= 1
    if point == "download.written":
        assert len(lib.tmp_files()) >= 1  # a whole image in its temp file
    if point in ("file.renamed", "db.transaction"):
        # The image is in place but no row names it (the transaction was rolled back).
        assert any(p.startswith("stray file") for p in lib.verify())
    _settle(trial, report, _resume_cli)
    if point == "submit.sent" and provider == "apiframe":
        assert trial.sim.stats.snapshot()["replays"] >= 1  # resent with its key: free


@pytest.mark.parametrize(("point", "provider", "nth"), FAILPOINTS,
                         ids=[f"{f}-{p}" for f, p, _ in FAILPOINTS])
def test_cli_killed_at_a_failpoint(
    point: str, provider: str, nth: int, make_sim: MakeSim, make_install: MakeInstall,
    report: ReliabilityReport,
) -> None:
    _kill_cli_at_failpoint(point, provider, nth, make_sim, make_install, report)


@pytest.mark.slow
@pytest.mark.parametrize(("point", "provider", "nth"), MORE_FAILPOINTS,
                         ids=[f"{f}-{p}" for f, p, _ in MORE_FAILPOINTS])
def test_cli_killed_at_a_failpoint_more(
    point: str, provider: str, nth: int, make_sim: MakeSim, make_install: MakeInstall,
    report: ReliabilityReport,
) -> None:
    _kill_cli_at_failpoint(point, provider, nth, make_sim, make_install, report)


RANDOM_JOB_SECONDS = 0.6  # a little longer: the run surely outlasts its seeded moment


def _random_moment(trial: Trial, seed: int) -> list[Job]:
    """Kill at a seeded moment after the jobs are written (before: nothing to lose),
    within the shortest time the simulator can take to finish them all."""
    waves = max(math.ceil(n / CONCURRENCY) for n in trial.counts.values())
    delay = random.Random(seed).uniform(0.0, 0.75 * waves * RANDOM_JOB_SECONDS)
    trial.all_written()
    assert trial.proc is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        trial.proc.wait(timeout=delay)  # the seeded moment (the process must still run)
    assert trial.proc.returncode is None, "the run ended before its seeded moment"
    return trial.kill("random moment")


def _kill_cli_at_random(seed: int, make_sim: MakeSim, make_install: MakeInstall,
                        report: ReliabilityReport) -> None:
    provider = ("apiframe", "apifree")[seed % 2]
    trial = _trial(f"cli-random-{seed}-{provider}", make_sim, make_install, {provider: N},
                   job_seconds=RANDOM_JOB_SECONDS)
    _start_generate(trial)
    _random_moment(trial, seed)
    _settle(trial, report, _resume_cli)


@pytest.mark.parametrize("seed", [20, 21])
def test_cli_killed_at_a_seeded_random_moment(
    seed: int, make_sim: MakeSim, make_install: MakeInstall, report: ReliabilityReport
) -> None:
    _kill_cli_at_random(seed, make_sim, make_install, report)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [200, 201])
def test_cli_killed_at_more_seeded_random_moments(
    seed: int, make_sim: MakeSim, make_install: MakeInstall, report: ReliabilityReport
) -> None:
    _kill_cli_at_random(seed, make_sim, make_install, report)


# ---------------------------------------------------------------------------- the app

MIXED = {"apiframe": 12, "apifree": 8}


def test_app_killed_while_jobs_run(
    make_sim: MakeSim, make_install: MakeInstall, report: ReliabilityReport
) -> None:
    trial = _trial("app-running", make_sim, make_install, MIXED, job_seconds=1.5)
    _start_app(trial)
    trial.all_written()
    trial.wait_for("jobs of both providers running", lambda js: {
        j.provider for j in js if j.state is JobState.RUNNING} == set(MIXED))

    at_kill = trial.kill(JobState.RUNNING.value)

    assert _count(at_kill, JobState.RUNNING) >= 2
    _settle(trial, report, _resume_app)


@pytest.mark.parametrize(("point", "nth"), [("db.transaction", 5)])
def test_app_killed_at_a_failpoint(
    point: str, nth: int, make_sim: MakeSim, make_install: MakeInstall,
    report: ReliabilityReport,
) -> None:
    trial = _trial(f"app-{point}@{nth}", make_sim, make_install, MIXED)
    _start_app(trial, failpoint=f"{point}@{nth}")

    at_kill = trial.died_at_failpoint(FAILPOINT_KILLS[point])

    assert 1 <= _count(at_kill, JobState.COMPLETED) <= nth - 1
    assert any(p.startswith("stray file") for p in trial.inst.library.verify())
    _settle(trial, report, _resume_app)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [300])
def test_app_killed_at_a_seeded_random_moment(
    seed: int, make_sim: MakeSim, make_install: MakeInstall, report: ReliabilityReport
) -> None:
    trial = _trial(f"app-random-{seed}", make_sim, make_install, MIXED,
                   job_seconds=RANDOM_JOB_SECONDS)
    _start_app(trial)
    _random_moment(trial, seed)
    _settle(trial, report, _resume_app)


def test_app_closed_with_jobs_in_flight_resumes_them_on_the_next_start(
    make_sim: MakeSim, make_install: MakeInstall, report: ReliabilityReport
) -> None:
    # APIFree's first polls are held open: its first jobs wait in "submitted" (and the
    # rest queue behind them), while Apiframe's jobs go through every state. (An APIFree
    # submit in flight at the close is the regression test below.)
    trial = _trial("app-closed", make_sim, make_install, MIXED, job_seconds=1.0,
                   script=[("apifree.poll", ["slow"] * CONCURRENCY)], hold=3 * HOLD)
    _start_app(trial)
    trial.wait_for_state(JobState.COMPLETED, 1)
    trial.held(CONCURRENCY)
    trial.wait_for("jobs in flight at both providers", lambda js: {
        j.provider for j in js
        if j.state in (JobState.SUBMITTED, JobState.RUNNING, JobState.DOWNLOADING)
    } == set(MIXED))

    assert trial.proc is not None
    closed = trial.inst.quit_app(trial.proc)

    assert closed.code == 0, closed.describe()
    at_close = trial.inst.jobs()
    trial.at_kill = tuple(at_close)
    print(f"{trial.name}: closed with {_states(at_close)}")
    unfinished = [j for j in at_close if j.state.active]
    assert any(j.state is not JobState.QUEUED for j in unfinished), _states(at_close)
    assert all(j.lease_owner is None for j in at_close)  # given back on the way out
    assert _count(at_close, JobState.INTERRUPTED) == 0
    assert {j.state for j in at_close if j.provider == "apifree"} <= {
        JobState.QUEUED, JobState.SUBMITTED}, "the APIFree polls were not held to the close"
    submits = trial.sim.stats.snapshot()["submits"]

    _settle(trial, report, _resume_app)

    # Nothing in flight was sent again as a new paid job; the queued ones were sent once.
    assert trial.inst.in_state(JobState.INTERRUPTED) == []
    after = trial.sim.stats.snapshot()["submits"]
    assert after["apiframe"] == MIXED["apiframe"] and after["apifree"] == MIXED["apifree"]
    assert after["apifree"] - submits["apifree"] == sum(
        j.provider == "apifree" and j.state is JobState.QUEUED for j in at_close)


def test_app_closed_during_an_apifree_submit_resumes_it_without_paying_again(
    make_sim: MakeSim, make_install: MakeInstall
) -> None:
    # The provider takes its time to answer the first submit; the user quits meanwhile.
    trial = _trial("app-closed-submitting", make_sim, make_install, {"apifree": 2},
                   script=[("apifree.submit", ["slow"])])
    _start_app(trial)
    trial.wait_for_state(JobState.SUBMITTING, 1)
    trial.held(1)  # the submit is at the provider, which will bill it

    assert trial.proc is not None
    closed = trial.inst.quit_app(trial.proc)
    assert closed.code == 0, closed.describe()
    wait_until(lambda: trial.sim.stats.snapshot()["submits"]["apifree"] == 2, DEADLINE,
               "the provider to create both paid jobs")

    resumed = trial.inst.run_app("resume", "--timeout", str(DEADLINE))

    assert resumed.code == 0, resumed.describe()
    # The promise: the next start finishes the job from the answer it already paid for.
    assert [j.state for j in trial.inst.jobs()] == [JobState.COMPLETED] * 2
    assert trial.sim.stats.snapshot()["submits"]["apifree"] == 2


def test_cancelling_a_job_killed_after_its_image_was_placed_leaves_no_stray_file(
    make_sim: MakeSim, make_install: MakeInstall
) -> None:
    trial = _trial("cancel-after-rename", make_sim, make_install, {"apiframe": 1})
    _start_generate(trial, failpoint="file.renamed")
    (job,) = trial.died_at_failpoint("file.renamed")
    assert job.state is JobState.DOWNLOADING

    res = trial.inst.run("cancel", job.id)

    assert res.code == 0, res.describe()
    assert trial.inst.library.job(job.id).state is JobState.CANCELLED
    assert trial.inst.library.verify() == []
