"""Regression tests for bugs the end-to-end suite found in the engine and the library
(each was first an xfail reproduction; all are fixed)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from keyring.backends import fail

from nbdesk.core.jobs import JobState
from nbdesk.core.runtime import Runtime
from nbdesk.core.secrets import SecretStore
from nbdesk.sim import Faults, Simulator
from tests.e2e.harness import FAST_SETTINGS, Cli
from tests.helpers import wait_until

MakeSim = Callable[..., Simulator]
MakeCli = Callable[..., Cli]


@contextmanager
def _answering(status: int) -> Iterator[str]:
    """A loopback HTTP server that answers every GET with ``status``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_retry_of_a_failed_download_asks_the_provider_for_a_fresh_link(
    make_sim: MakeSim, make_cli: MakeCli
) -> None:
    sim = make_sim(queue_seconds=0.05, job_seconds=0.3)
    cli = make_cli(sim)
    working = sim.base_url
    with _answering(403) as expired:
        sim.base_url = expired  # the result links the provider hands out are dead (403)
        gen = cli.run("generate", "an expiring link", "--provider", "apiframe", "--json")
        assert gen.code == 1, gen.describe()
        [rec] = gen.records()
        assert cli.library.job(rec["id"]).error_kind == "download"

        sim.base_url = working  # the provider now hands out working links again
        retried = cli.run("retry", rec["id"], "--json")

    [again] = retried.records()
    assert sim.stats.snapshot()["submits"]["apiframe"] == 1  # nothing paid twice
    assert again["status"] == "completed", retried.describe()


def test_app_start_without_the_key_keeps_a_paid_job_resumable(
    make_sim: MakeSim, make_cli: MakeCli
) -> None:
    sim = make_sim(queue_seconds=0.05, job_seconds=0.5)
    cli = make_cli(sim)
    gen = cli.run("generate", "paid already", "--provider", "apiframe", "--no-wait", "--json")
    assert gen.code == 0, gen.describe()
    [rec] = gen.records()
    assert rec["remote_id"]

    # The app starts (it resumes every unfinished job) where the key is missing, e.g. the
    # keychain is locked or the env variable not set this time.
    env = {"NBDESK_HOME": str(cli.home)}
    rt = Runtime.open(env)
    rt.secrets = SecretStore(environ=env, backend=fail.Keyring())  # never the real keychain

    async def app_session() -> None:
        async with rt.engine(take_over=False, resume=True) as engine:
            await engine.wait(engine.busy())

    try:
        asyncio.run(app_session())
    finally:
        rt.close()

    # The key is back; the user does what nbdesk offers for the job's state.
    job = cli.library.job(rec["id"])
    follow = (cli.run("retry", job.id) if job.state is JobState.FAILED
              else cli.run("resume"))
    assert cli.library.job(rec["id"]).state is JobState.COMPLETED, follow.describe()
    assert sim.stats.snapshot()["submits"]["apiframe"] == 1


def test_cancelling_a_job_killed_mid_download_removes_its_partial_file(
    make_sim: MakeSim, make_cli: MakeCli
) -> None:
    sim = make_sim(queue_seconds=0.05, job_seconds=0.3, faults=Faults(slow_seconds=1.0))
    sim.script("download", ["slow"])
    cli = make_cli(sim, settings=FAST_SETTINGS)
    proc = cli.start("generate", "cancel me", "--provider", "apiframe", "--json")
    [job] = cli.wait_for_jobs(lambda js: [j.state for j in js] == [JobState.DOWNLOADING], 20,
                              "the job to be downloading", proc)
    wait_until(lambda: sim.stats.snapshot()["faults"]["slow"] == 1, 10, "the held download")
    cli.kill(proc)
    # What a kill in the middle of the body leaves (here the body was held back: plant it).
    partial = cli.library.tmp_path(job.id, 0)
    partial.write_bytes(b"\xff\xd8\xff half a jpeg")

    cancelled = cli.run("cancel", job.id)

    assert cancelled.code == 0, cancelled.describe()
    assert cli.library.job(job.id).state is JobState.CANCELLED
    assert cli.library.tmp_files() == []


def test_resume_removes_a_stale_reference_temp_file(make_cli: MakeCli) -> None:
    cli = make_cli(None)
    stale = cli.library.paths.tmp / f"ref-{'ab' * 32}-0f1e2d.part"
    stale.write_bytes(b"\x89PNG\r\n\x1a\n a reference cut short")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))  # long dead: no live import is writing it

    res = cli.run("resume", "--json")

    assert res.code == 0, res.describe()
    assert cli.library.tmp_files() == []


def test_two_transient_download_errors_then_one_garbled_body_still_complete(
    make_sim: MakeSim, make_cli: MakeCli
) -> None:
    sim = make_sim(queue_seconds=0.05, job_seconds=0.3, faults=Faults(retry_after=0.05))
    sim.script("download", ["429", "429", "malformed"])  # then every download is fine
    cli = make_cli(sim)

    gen = cli.run("generate", "a patient cat", "--provider", "apiframe", "--json")

    [rec] = gen.records()
    assert sim.stats.snapshot()["faults"]["malformed"] == 1
    assert rec["status"] == "completed", gen.describe()
