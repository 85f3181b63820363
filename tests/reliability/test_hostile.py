"""Reliability: the real ``nbdesk`` command against a provider that misbehaves on purpose.

Each trial is one finding of issue #15, tried as a new user would (the CLI in a
subprocess, ``NBDESK_APIFRAME_BASE_URL`` on a loopback server), and adds its figure to the
summary block: the peak memory a gzip bomb costs, the images a result may make us store,
how far past its timeout a dripped answer runs, keys found in anything we wrote or
printed, paid calls a retry makes, and offline jobs that came back interrupted.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from nbdesk.api.capabilities import APIFRAME
from nbdesk.core.jobs import OFFLINE_NOTE, JobState
from nbdesk.sim import SimConfig, Simulator
from tests.e2e.harness import APIFRAME_KEY, APIFREE_KEY, FAST_SETTINGS, REPO, Cli, Result
from tests.hostile import Hostile, bomb, drip, json_answer, png_image, script
from tests.reliability.conftest import ReliabilityReport

pytestmark = pytest.mark.slow

SUBMIT = "/v2/images/generate"
POLL = "/v2/jobs/"
#: The CLI's job timeout in these trials (the settings' lowest accepted value).
JOB_TIMEOUT = 10.0


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    with Hostile() as h:
        h.route("POST", SUBMIT, json_answer({"jobId": "job1", "status": "QUEUED"}, status=202))
        image = png_image((64, 48), (200, 30, 30))
        h.route("GET", "/img/", lambda r: r.send_body(image, content_type="image/png"))
        yield h


@pytest.fixture
def cli(tmp_path: Path, hostile: Hostile) -> Iterator[Cli]:
    # The harness points both remote providers' base URLs at anything with a base_url.
    made = Cli(tmp_path / "user", cast(Simulator, hostile),
               settings={**FAST_SETTINGS, "job_timeout": JOB_TIMEOUT})
    yield made
    made.close()


def completed(hostile: Hostile, n: int = 1) -> Callable[..., None]:
    urls = [hostile.url(f"/img/{i}.png") for i in range(n)]
    return json_answer({"jobId": "job1", "status": "COMPLETED", "progress": 100,
                        "result": {"images": urls}, "creditCost": 0.04})


#: ``python -c`` that runs ``nbdesk ARGS`` (argv[2:]) and at exit writes its own peak RSS
#: (VmHWM, in kB) to argv[1]: ``ru_maxrss`` would also count the RSS of the test process
#: that started it (Linux keeps it across fork and exec).
_MEASURED = """
import atexit, runpy, sys
out = sys.argv[1]

def peak():
    with open("/proc/self/status") as fh:
        hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(out, "w") as fh:
        fh.write(hwm)

atexit.register(peak)
sys.argv = ["nbdesk", *sys.argv[2:]]
runpy.run_module("nbdesk", run_name="__main__", alter_sys=True)
"""


def run_measured(cli: Cli, *args: str, timeout: float = 120.0) -> tuple[Result, float, float]:
    """``nbdesk ARGS`` to the end: its result, its peak RSS in MB and wall time in s."""
    peak_file = cli.out / "peak.kb"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(peak_file), *args], env=cli.env, cwd=REPO,
        capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    elapsed = time.monotonic() - started
    result = Result(done.returncode, done.stdout.decode("utf-8", "replace"),
                    done.stderr.decode("utf-8", "replace"))
    return result, int(peak_file.read_text()) / 1024, elapsed


def one_job(cli: Cli) -> object:
    (job,) = cli.jobs()
    return job


def test_a_gzip_bomb_as_a_poll_answer_fails_cleanly_in_little_memory(
        cli: Cli, hostile: Hostile, report: ReliabilityReport) -> None:
    hostile.route("GET", POLL, script(
        bomb(400_000_000),
        json_answer({"jobId": "job1", "status": "FAILED", "error": "gave up"})))
    result, peak_mb, _ = run_measured(cli, "generate", "a cat", "--provider", "apiframe")
    assert result.code == 1, result.describe()
    assert "Traceback" not in result.stderr
    assert peak_mb < 300, f"peak RSS {peak_mb:.0f} MB"
    with report.lock:
        report.bomb_peak_mb = max(report.bomb_peak_mb or 0.0, peak_mb)
        report.jobs += 1


def test_a_result_listing_300_images_stores_none_beyond_the_models_maximum(
        cli: Cli, hostile: Hostile, report: ReliabilityReport) -> None:
    hostile.route("GET", POLL, completed(hostile, 300))
    result = cli.run("generate", "a cat", "--provider", "apiframe", "--count", "1")
    job = one_job(cli)
    stored = [p for p in cli.files_under_home() if p.parent.name != "tmp"
              and p.suffix in (".png", ".jpg", ".webp")]
    limit = APIFRAME.model("nano-banana").max_images
    assert result.code == 1, result.describe()
    assert job.state is JobState.FAILED and job.error_kind == "protocol", job  # type: ignore[attr-defined]
    assert len(stored) <= limit and not cli.library.items()
    with report.lock:
        report.images_capped = f"300 listed, {len(stored)} stored (max {limit})"
        report.jobs += 1


def test_a_poll_answer_dripped_a_byte_a_second_ends_at_the_job_timeout(
        cli: Cli, hostile: Hostile, report: ReliabilityReport) -> None:
    body = b'{"jobId": "job1", "status": "PROCESSING", "progress": 5}' + b" " * 200
    hostile.route("GET", POLL, drip(body, every=1.0))
    result, _, elapsed = run_measured(cli, "generate", "a cat", "--provider", "apiframe")
    job = one_job(cli)
    assert result.code == 1, result.describe()
    assert job.state is JobState.FAILED and job.error_kind == "timeout", job  # type: ignore[attr-defined]
    assert job.remote_id == "job1"  # type: ignore[attr-defined]
    overrun = elapsed - JOB_TIMEOUT
    assert overrun < 8.0, f"ran {overrun:.1f} s past a {JOB_TIMEOUT:g} s job timeout"
    with report.lock:
        report.timeout_overrun_s = max(report.timeout_overrun_s or 0.0, overrun)
        report.jobs += 1


def test_a_key_repeated_back_by_the_provider_is_never_stored_or_shown(
        cli: Cli, hostile: Hostile, report: ReliabilityReport) -> None:
    hostile.route("POST", SUBMIT, json_answer(
        {"error": f"Invalid API key provided: {APIFRAME_KEY} (and {APIFREE_KEY})"},
        status=401))
    hostile.route("GET", POLL, json_answer(
        {"jobId": "job1", "status": "FAILED", "error": f"bad key {APIFRAME_KEY}"}))
    plain = cli.run("generate", "a cat", "--provider", "apiframe")
    as_json = cli.run("generate", "a cat", "--provider", "apiframe", "--json")
    assert plain.code == 3 and as_json.code == 3, plain.describe() + as_json.describe()
    assert as_json.stderr_lines(), "a failed job's reason must be on stderr with --json too"
    texts = [plain.stdout, plain.stderr, as_json.stdout, as_json.stderr]
    texts += [f"{j.error} {j.note}" for j in cli.jobs()]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in cli.files_under_home()]
    raw = sqlite3.connect(cli.home / "library.sqlite3").iterdump() \
        if (cli.home / "library.sqlite3").exists() else iter(())
    texts += list(raw)
    found = [t for t in texts for key in (APIFRAME_KEY, APIFREE_KEY) if key in t]
    assert not found, found[:3]
    assert any("Invalid API key provided" in t for t in texts)  # the rest of it is kept
    with report.lock:
        report.keys_redacted += 1
        report.leak_scans += 1
        report.jobs += 2


def test_retry_of_a_job_the_provider_has_makes_no_paid_call(
        cli: Cli, hostile: Hostile, report: ReliabilityReport) -> None:
    # A 401-digit progress: the answer cannot be read, again and again, until the job
    # times out with its remote id.
    hostile.route("GET", POLL, json_answer(
        b'{"jobId": "job1", "status": "PROCESSING", "progress": 1' + b"0" * 400 + b"}"))
    first = cli.run("generate", "a cat", "--provider", "apiframe")
    job = one_job(cli)
    assert first.code == 1 and job.remote_id == "job1", first.describe()  # type: ignore[attr-defined]
    posts = hostile.count("POST", SUBMIT)
    hostile.route("GET", POLL, completed(hostile))
    again = cli.run("retry", job.id)  # type: ignore[attr-defined]
    assert again.code == 0, again.describe()
    assert "no new payment" in again.stdout + again.stderr
    assert hostile.count("POST", SUBMIT) == posts == 1
    assert len(cli.library.items()) == 1
    with report.lock:
        report.paid_calls_per_retry.append(hostile.count("POST", SUBMIT) - posts)
        report.jobs += 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("provider", ["apifree", "gemini"])
def test_a_job_that_never_reached_the_provider_waits_and_is_never_interrupted(
        tmp_path: Path, provider: str, report: ReliabilityReport) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    cli = Cli(tmp_path / "user", None, keys={provider: "offline-test-key-5521"},
              settings={**FAST_SETTINGS, "job_timeout": 600.0})
    cli.env[f"NBDESK_{provider.upper()}_BASE_URL"] = url
    try:
        proc = cli.start("generate", "a cat", "--provider", provider)
        cli.wait_for_jobs(lambda jobs: jobs and jobs[0].note == OFFLINE_NOTE, 60,
                          "the job to wait for the network", proc)
        cli.kill(proc)  # the app stops (or crashes) while offline
        (job,) = cli.jobs()
        with report.lock:
            report.offline_trials += 1
            report.offline_interrupted += job.state is JobState.INTERRUPTED
        assert job.state is JobState.QUEUED, job
        with Simulator(SimConfig(queue_seconds=0.05, job_seconds=0.2), port=port) as sim:
            resumed = cli.run("resume")
            (job,) = cli.jobs()
            assert resumed.code == 0 and job.state is JobState.COMPLETED, resumed.describe()
            assert sim.stats.submits[provider] == 1
    finally:
        cli.close()
    with report.lock:
        report.jobs += 1
