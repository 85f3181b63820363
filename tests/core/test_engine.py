"""The job engine against the loopback simulator: states, crash recovery, leases, faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from nbdesk.api.base import InputError
from nbdesk.core.connector import ConfigError
from nbdesk.core.engine import Engine
from nbdesk.core.jobs import Job, JobParams, JobSpec, JobState
from nbdesk.core.library import sha256_file
from nbdesk.sim import Faults
from tests.helpers import EngineEnv, close_engine

pytestmark = pytest.mark.anyio

FRAME = JobSpec(provider="apiframe", model="nano-banana", prompt="a red bicycle")
FREE = JobSpec(provider="apifree", model="google/nano-banana-pro", prompt="a blue boat",
               params=JobParams(aspect_ratio="16:9", resolution="1K"))


def write_png(path: Path, size: tuple[int, int] = (80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("spec", [FRAME, FREE], ids=["apiframe", "apifree"])
async def test_jobs_walk_every_state_into_the_library(engine_env: EngineEnv,
                                                      spec: JobSpec) -> None:
    engine = engine_env.engine()
    try:
        await engine.start()
        jobs = await engine.enqueue(spec, count=2)
        done = await engine.wait([j.id for j in jobs])
    finally:
        await close_engine(engine)
    for job in done:
        assert job.state is JobState.COMPLETED, job.error
        assert job.remote_id and job.cost and job.idem_key == job.id
        assert engine_env.states(job.id) == [
            "queued", "submitting", "submitted", "running", "downloading", "completed"]
        (item,) = engine_env.library.items_for_job(job.id)
        assert item.path.is_file() and sha256_file(item.path) == item.sha256
        assert item.size == item.path.stat().st_size
        with Image.open(item.path) as im:
            assert im.size == (item.width, item.height)
        assert item.prompt == spec.prompt and item.remote_id == job.remote_id
        assert item.params["aspect_ratio"] == spec.params.aspect_ratio
    assert engine_env.sim.stats.submits[spec.provider] == 2
    hits = engine_env.library.items(text=spec.prompt.split()[-1])
    assert {i.job_id for i in hits} == {j.id for j in done}
    assert engine_env.library.verify() == []
    assert engine_env.library.tmp_files() == []


async def test_files_are_stored_exactly_as_delivered(engine_env: EngineEnv) -> None:
    """The library keeps the provider's bytes (never re-encoded)."""
    import httpx

    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(JobSpec(
            provider="apiframe", model="nano-banana-pro", prompt="webp please",
            params=JobParams(output_format="webp", resolution="2K")))
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    (item,) = engine_env.library.items_for_job(job.id)
    assert item.format == "webp" and item.path.suffix == ".webp"
    async with httpx.AsyncClient() as client:
        original = (await client.get(job.result_urls[0])).content
    assert item.path.read_bytes() == original
    assert max(item.width, item.height) == 2048


@contextlib.contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """A loopback HTTP server for the files of ``folder``; yields its base URL."""
    handler = functools.partial(QuietFiles, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_references_are_copied_and_sent(engine_env: EngineEnv, tmp_path: Path) -> None:
    """A local file is copied into the library and sent from the copy; a URL is fetched
    and checked first, kept as a copy, and sent as the URL (the provider fetches it)."""
    ref = tmp_path / "ref.png"
    data = write_png(ref)
    served = tmp_path / "web"
    served.mkdir()
    web_data = write_png(served / "b.png", size=(48, 32))
    with file_server(served) as base:
        url = f"{base}/b.png"
        spec = JobSpec(provider="apiframe", model="nano-banana", prompt="like this",
                       refs=(str(ref), url))
        engine = engine_env.engine()
        try:
            await engine.start()
            (job,) = await engine.enqueue(spec)
            ref.unlink()  # the library's copy is what gets sent
            (job,) = await engine.wait([job.id])
        finally:
            await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    digest = hashlib.sha256(data).hexdigest()
    file_ref, url_ref = job.refs
    assert file_ref.kind == "file" and file_ref.sha256 == digest
    assert (engine_env.library.root / str(file_ref.path)).read_bytes() == data
    assert url_ref.kind == "url" and url_ref.source == url
    assert (url_ref.width, url_ref.height, url_ref.mime) == (48, 32, "image/png")
    assert (engine_env.library.root / str(url_ref.path)).read_bytes() == web_data
    assert url_ref.sha256 == hashlib.sha256(web_data).hexdigest()
    record = engine_env.sim.stats.jobs[-1]
    assert record.n_refs == 2 and record.ref_sha256s == [digest, None]  # the URL as a URL
    (item,) = engine_env.library.items_for_job(job.id)
    assert item.refs == job.refs


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JobSpec("apiframe", "nano-banana", "   "), "empty"),
        (JobSpec("apiframe", "nano-banana", "x" * 2001), "at most 2000"),
        (JobSpec("apiframe", "nano-banana", "x", JobParams(aspect_ratio="21:9")), "21:9"),
        (JobSpec("apifree", "google/nano-banana-pro", "x", JobParams(output_format="png")),
         "format"),
        (JobSpec("apiframe", "nano-banana", "x", refs=("https://e.com/a.png",) * 4),
         "at most 3"),
        (JobSpec("apiframe", "nano-banana", "x", refs=("file:///etc/passwd",)), "http"),
        (JobSpec("apiframe", "nano-banana", "x", refs=("/nonexistent/x.png",)), "x.png"),
        (JobSpec("nope", "m", "x"), "unknown provider"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_written_or_sent(
    engine_env: EngineEnv, spec: JobSpec, message: str
) -> None:
    engine = engine_env.engine()
    try:
        with pytest.raises(InputError, match=message):
            await engine.enqueue(spec)
    finally:
        await close_engine(engine)
    assert engine_env.library.jobs() == []
    assert engine_env.sim.stats.requests == 0


async def test_missing_key_is_a_config_error_and_nothing_is_written(
    engine_env: EngineEnv, secret_service: object
) -> None:
    del engine_env.env["NBDESK_APIFREE_API_KEY"]  # and the (private) keychain is empty
    engine = engine_env.engine()
    try:
        with pytest.raises(ConfigError, match="no API key for APIFree"):
            await engine.enqueue(FREE)
    finally:
        await close_engine(engine)
    assert engine_env.library.jobs() == []


async def test_wrong_key_fails_the_job_with_an_auth_error(engine_env: EngineEnv) -> None:
    engine_env.sim.config.keys = {"apiframe": {"another"}}
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(FRAME)
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.FAILED and job.error_kind == "auth"
    assert job.error and "frame-test-key-123" not in job.error


async def test_provider_failure_reason_is_kept(engine_env: EngineEnv) -> None:
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(JobSpec("apiframe", "nano-banana", "bad #fail"))
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.FAILED and job.error_kind == "provider_failed"
    assert job.error and "content policy" in job.error


async def test_unknown_status_keeps_polling_until_the_job_timeout(engine_env: EngineEnv) -> None:
    engine = engine_env.engine(job_timeout=0.5)
    try:
        await engine.start()
        (job,) = await engine.enqueue(JobSpec("apiframe", "nano-banana", "odd #weird"))
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.FAILED and job.error_kind == "timeout"
    assert "running" in engine_env.states(job.id)
    assert engine_env.sim.stats.polls["apiframe"] >= 3


# ------------------------------------------------------------------ crash recovery


async def _stage(engine_env: EngineEnv, spec: JobSpec, **fields: object) -> str:
    """Put a job in the database as a killed process would have left it."""
    (job,) = engine_env.library.add_jobs(spec, [], 1)
    owner = "deadhost:1:dead"  # another host: only its expired lease frees it
    engine_env.library.claim(job.id, owner, ttl=30)
    engine_env.library.update_job(job.id, owner, lease_expires=time.time() - 1, **fields)
    return job.id


async def test_resume_resends_a_submitting_apiframe_job_with_the_same_key(
    engine_env: EngineEnv,
) -> None:
    # The first process's submit reached the provider, then it died before the answer.
    job_id = await _stage(engine_env, FRAME, state=JobState.SUBMITTING)
    engine = engine_env.engine()
    try:
        first = await engine.connector.provider("apiframe")
        from nbdesk.api.base import GenerationRequest
        await first.submit(GenerationRequest(model="nano-banana", prompt=FRAME.prompt), job_id)
        resumed = await engine.start()
        (job,) = await engine.wait(resumed)
    finally:
        await close_engine(engine)
    assert resumed == [job_id] and job.state is JobState.COMPLETED
    assert engine_env.sim.stats.submits["apiframe"] == 1
    assert engine_env.sim.stats.replays == 1


async def test_resume_interrupts_a_submitting_apifree_job_and_retry_completes_it(
    engine_env: EngineEnv,
) -> None:
    job_id = await _stage(engine_env, FREE, state=JobState.SUBMITTING)
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.wait([job_id])
        assert job.state is JobState.INTERRUPTED and job.error_kind == "unanswered"
        assert job.error and "Retry" in job.error
        assert engine_env.sim.stats.requests == 0
        # A maybe-second payment is never made unless the caller says the user agreed.
        with pytest.raises(InputError, match="may already have been billed"):
            await engine.retry(job_id)
        assert (await engine.db(engine.library.job, job_id)).state is JobState.INTERRUPTED
        retried = await engine.retry(job_id, resubmit_ok=True)
        assert retried.idem_key != job.idem_key  # a new submission, knowingly
        (job,) = await engine.wait([job_id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED
    assert engine_env.sim.stats.submits["apifree"] == 1


@pytest.mark.parametrize("state", [JobState.SUBMITTED, JobState.RUNNING, JobState.DOWNLOADING])
async def test_resume_polls_a_submitted_job_and_never_resubmits(
    engine_env: EngineEnv, state: JobState
) -> None:
    engine = engine_env.engine()
    try:
        provider = await engine.connector.provider("apiframe")
        from nbdesk.api.base import GenerationRequest
        remote = await provider.submit(
            GenerationRequest(model="nano-banana", prompt=FRAME.prompt), "k-" + state.value)
        job_id = await _stage(engine_env, FRAME, state=state, remote_id=remote.remote_id)
        # a partial download left by the dead process
        engine_env.library.tmp_path(job_id, 0).write_bytes(b"partial")
        resumed = await engine.start()
        (job,) = await engine.wait(resumed)
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED
    assert engine_env.sim.stats.submits["apiframe"] == 1
    assert engine_env.library.tmp_files() == []
    assert engine_env.library.verify() == []


async def test_closing_with_jobs_in_flight_resumes_them_on_the_next_start(
    engine_env: EngineEnv,
) -> None:
    engine_env.sim.config.job_seconds = 0.6
    first = engine_env.engine()
    seen_running = asyncio.Event()
    first.subscribe(lambda j: j.state is JobState.RUNNING and seen_running.set())
    try:
        await first.start()
        jobs = await first.enqueue(FRAME, count=3)
        await seen_running.wait()
    finally:
        await close_engine(first)
    states = {j.state for j in engine_env.library.jobs()}
    assert states & {JobState.SUBMITTED, JobState.RUNNING, JobState.QUEUED}
    assert all(j.lease_owner is None for j in engine_env.library.jobs())
    second = engine_env.engine()
    try:
        resumed = await second.start()
        done = await second.wait(resumed)
    finally:
        await close_engine(second)
    assert sorted(resumed) == sorted(j.id for j in jobs)
    assert all(j.state is JobState.COMPLETED for j in done)
    assert engine_env.sim.stats.submits["apiframe"] == 3


# ------------------------------------------------------------------ leases, cancel, pause


async def test_a_job_is_worked_by_one_process_at_a_time(engine_env: EngineEnv) -> None:
    engine_env.sim.config.job_seconds = 0.5
    a, b = engine_env.engine(), engine_env.engine()
    try:
        await a.start()
        await b.start()
        # both submitted (so that each is paid for once, not cancelled before its
        # submit) before b steps in
        submitted: set[str] = set()
        both = asyncio.Event()

        def seen(job: Job) -> None:
            if job.remote_id is not None:
                submitted.add(job.id)
                if len(submitted) == 2:
                    both.set()

        a.subscribe(seen)
        jobs = await a.enqueue(FRAME, count=2)
        ids = [j.id for j in jobs]
        assert await b.resume_all() == []  # held by a live owner
        await asyncio.wait_for(both.wait(), 15)
        # b asks to cancel one; a notices and stops it.
        requested = await b.cancel(ids[0])
        assert requested.cancel_requested
        done = await a.wait(ids)
    finally:
        await close_engine(a)
        await close_engine(b)
    assert [j.state for j in done] == [JobState.CANCELLED, JobState.COMPLETED]
    assert engine_env.sim.stats.submits["apiframe"] == 2


async def test_cancel_a_queued_job_sends_nothing(engine_env: EngineEnv) -> None:
    engine = engine_env.engine()
    try:
        engine.pause()
        await engine.start()
        (job,) = await engine.enqueue(FRAME)
        job = await engine.cancel(job.id)
    finally:
        await close_engine(engine)
    assert job.state is JobState.CANCELLED and job.note is None
    assert engine_env.sim.stats.requests == 0


async def test_pause_holds_queued_jobs_until_unpaused(engine_env: EngineEnv) -> None:
    engine = engine_env.engine()
    try:
        engine.pause()
        await engine.start()
        (job,) = await engine.enqueue(FRAME)
        await asyncio.sleep(0)  # let the worker reach the pause gate
        assert engine_env.library.job(job.id).state is JobState.QUEUED
        assert engine_env.sim.stats.requests == 0
        engine.unpause()
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED


async def test_another_process_job_is_taken_over_when_its_owner_is_gone(
    engine_env: EngineEnv,
) -> None:
    job_id = await _stage(engine_env, FRAME, state=JobState.QUEUED)
    engine = engine_env.engine()
    try:
        taken = asyncio.Event()
        engine.subscribe(lambda j: j.id == job_id and j.state.finished and taken.set())
        await engine.start(resume=False)  # the scan loop finds it
        await taken.wait()
    finally:
        await close_engine(engine)
    assert engine_env.library.job(job_id).state is JobState.COMPLETED


# ------------------------------------------------------------------ faults and storage


async def test_jobs_complete_through_a_fault_storm(engine_env: EngineEnv) -> None:
    engine_env.sim.config.faults = Faults(rate=0.3, seed=11, retry_after=0.02,
                                          slow_seconds=0.05)
    engine = engine_env.engine(concurrency=6)
    try:
        await engine.start()
        jobs = await engine.enqueue(FRAME, count=6)
        jobs += await engine.enqueue(FREE, count=6)
        done = await engine.wait([j.id for j in jobs])
        for _round in range(5):  # a retry's own submit may meet a fault too
            interrupted = [j for j in done if j.state is JobState.INTERRUPTED]
            assert all(j.provider == "apifree" for j in interrupted)
            for job in interrupted:
                await engine.retry(job.id, resubmit_ok=True)  # the user agrees to pay
            done = await engine.wait([j.id for j in jobs])
    finally:
        await close_engine(engine)
    stats = engine_env.sim.stats
    assert sum(stats.faults.values()) > 0
    assert all(j.state is JobState.COMPLETED for j in done), [
        (j.provider, j.state, j.error) for j in done if j.state is not JobState.COMPLETED]
    assert stats.submits["apiframe"] == 6
    unanswered = sum(1 for r in stats.jobs if r.provider == "apifree" and not r.answered)
    assert stats.submits["apifree"] == 6 + unanswered
    assert engine_env.library.verify() == []


async def test_unwritable_library_fails_clearly_and_retry_downloads_without_paying(
    engine_env: EngineEnv,
) -> None:
    images = engine_env.paths.images
    images.rmdir()
    images.write_text("not a folder")  # any write below images/ now fails, even as root
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(FRAME)
        (job,) = await engine.wait([job.id])
        assert job.state is JobState.FAILED and job.error_kind == "storage"
        assert job.error and "cannot write to the library" in job.error
        images.unlink()
        images.mkdir()
        await engine.retry(job.id)
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED
    assert engine_env.sim.stats.submits["apiframe"] == 1
    assert engine_env.library.verify() == []


async def test_demo_mode_needs_no_key(engine_env: EngineEnv) -> None:
    engine_env.env.pop("NBDESK_APIFRAME_API_KEY")  # no key, and no keychain is asked
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(JobSpec("apiframe", "nano-banana", "demo!", demo=True))
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED and job.demo
    assert engine_env.sim.stats.requests == 0  # the in-process demo simulator answered


def test_data_uri_of_reference_matches_file(tmp_path: Path) -> None:
    from nbdesk.api.images import prepare_reference

    ref = tmp_path / "r.png"
    data = write_png(ref)
    reference, original, info = prepare_reference(str(ref))
    assert original == data and info is not None and info.mime == "image/png"
    assert base64.b64decode(reference.url.split(",", 1)[1]) == data


def test_job_ids_are_uuids(engine_env: EngineEnv) -> None:
    (job,) = engine_env.library.add_jobs(FRAME, [], 1)
    assert uuid.UUID(job.id).version == 4


_ = Engine  # the type used by fixtures


async def test_resumed_download_asks_for_fresh_links(engine_env: EngineEnv) -> None:
    """Links stored by a dead process may be gone (expired; in Demo, its simulator)."""
    engine = engine_env.engine()
    try:
        provider = await engine.connector.provider("apiframe")
        from nbdesk.api.base import GenerationRequest
        remote = await provider.submit(
            GenerationRequest(model="nano-banana", prompt=FRAME.prompt), "stale-links")
        dead = "http://127.0.0.1:9/files/gone/0.jpg"  # nothing listens on port 9
        job_id = await _stage(engine_env, FRAME, state=JobState.DOWNLOADING,
                              remote_id=remote.remote_id, result_urls=[dead])
        resumed = await engine.start()
        (job,) = await engine.wait(resumed)
    finally:
        await close_engine(engine)
    assert resumed == [job_id]
    assert job.state is JobState.COMPLETED, job.error
    assert job.result_urls and job.result_urls[0].startswith(engine_env.sim.base_url)
    assert engine_env.sim.stats.submits["apiframe"] == 1


PNG_FRAME = JobSpec(provider="apiframe", model="nano-banana", prompt="a green kite",
                    params=JobParams(output_format="png"))


async def run_png_job(engine_env: EngineEnv) -> Job:
    """One PNG job through a fresh engine, to its end."""
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(PNG_FRAME)
        (done,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    return done


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
async def test_a_damaged_png_is_refused_and_downloaded_again(engine_env: EngineEnv,
                                                             fault: str) -> None:
    """The simulator sends the PNG cut in half (with a Content-Length that matches) or
    with one byte changed: the engine must not store it, and fetches it again."""
    engine_env.sim.script("download", [fault])
    job = await run_png_job(engine_env)
    assert job.state is JobState.COMPLETED, job.error
    assert engine_env.sim.stats.faults[fault] == 1 and engine_env.sim.stats.downloads == 1
    (item,) = engine_env.library.items_for_job(job.id)
    assert item.format == "png" and sha256_file(item.path) == item.sha256
    with Image.open(item.path) as im:
        im.load()
        assert im.size == (item.width, item.height)
    assert engine_env.library.verify() == []
    assert engine_env.library.tmp_files() == []


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
async def test_a_png_damaged_every_time_fails_the_job(engine_env: EngineEnv,
                                                      fault: str) -> None:
    engine_env.sim.script("download", [fault] * 3)
    job = await run_png_job(engine_env)
    assert job.state is JobState.FAILED
    assert job.error == ("the provider's file is not a usable image: "
                         "the image is truncated or damaged")
    assert engine_env.library.items_for_job(job.id) == []
    assert engine_env.library.tmp_files() == []


async def test_a_png_proved_as_it_streams_is_not_read_again(
    engine_env: EngineEnv, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second pass over a PNG (Pillow's verify) is skipped when the download's
    stream check proved it whole; other formats are still probed in full."""
    from PIL import PngImagePlugin

    def no_second_pass(self: object) -> None:
        raise AssertionError("a proved PNG was verified again")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "verify", no_second_pass)
    job = await run_png_job(engine_env)
    assert job.state is JobState.COMPLETED, job.error
    (item,) = engine_env.library.items_for_job(job.id)
    assert sha256_file(item.path) == item.sha256 and item.size == item.path.stat().st_size


@pytest.mark.parametrize("keep", [False, True], ids=["stripped", "kept by the setting"])
async def test_references_go_without_their_location_unless_the_user_keeps_it(
        engine_env: EngineEnv, tmp_path: Path, keep: bool) -> None:
    from tests.api.test_images import SECRETS, with_metadata

    photo = with_metadata("JPEG")
    ref = tmp_path / "phone.jpg"
    ref.write_bytes(photo)
    spec = JobSpec(provider="apiframe", model="nano-banana", prompt="like this",
                   refs=(str(ref),))
    engine = engine_env.engine()
    engine.connector.settings_service.update(keep_reference_metadata=keep)
    try:
        await engine.start()
        (job,) = await engine.enqueue(spec)
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    copy = (engine_env.library.root / str(job.refs[0].path)).read_bytes()
    with Image.open(io.BytesIO(copy)) as im:
        gps = im.getexif().get_ifd(0x8825)
    assert bool(gps) is keep
    assert any(s in copy for s in SECRETS) is keep
    # What was sent is that copy (the simulator hashes the data URI's bytes).
    assert engine_env.sim.stats.jobs[-1].ref_sha256s == [hashlib.sha256(copy).hexdigest()]


@pytest.mark.parametrize("kind", ["offline", "auth", "config", "transient"])
async def test_retry_of_an_idempotent_submit_tried_before_keeps_its_key(
        engine_env: EngineEnv, kind: str) -> None:
    """An earlier attempt may have reached Apiframe before the last one failed (offline,
    a refused key...): the retry resends under the same Idempotency-Key, so the provider
    finds its own job rather than billing a second one."""
    job_id = await _stage(engine_env, FRAME, state=JobState.FAILED, error_kind=kind,
                          error="gave up", submit_attempts=2)
    original = engine_env.library.job(job_id).idem_key
    engine = engine_env.engine()
    try:
        retried = await engine.retry(job_id)
        (job,) = await engine.wait([job_id])
    finally:
        await close_engine(engine)
    assert retried.idem_key == original and job.state is JobState.COMPLETED, job.error
    (record,) = engine_env.sim.stats.jobs
    assert record.idempotency_key == original
