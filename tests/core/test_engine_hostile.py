"""The engine against a provider that misbehaves on purpose (tests/hostile.py), through the
real httpx client: the job deadline during a call, too many result URLs, offline submits,
keys repeated back."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from nbdesk.core.jobs import OFFLINE_NOTE, JobSpec, JobState, RetryPlan
from nbdesk.core.secrets import RedactingFilter
from tests.helpers import EngineEnv, close_engine
from tests.hostile import Hostile, Seen, delay, drip, json_answer, png_image

pytestmark = pytest.mark.anyio

FRAME = JobSpec(provider="apiframe", model="nano-banana", prompt="a red bicycle")
FREE = JobSpec(provider="apifree", model="google/nano-banana-pro", prompt="a blue boat")
GEMINI = JobSpec(provider="gemini", model="gemini-2.5-flash-image", prompt="a green kite")


def point_at(env: EngineEnv, base_url: str) -> None:
    for provider in ("APIFRAME", "APIFREE", "GEMINI"):
        env.env[f"NBDESK_{provider}_BASE_URL"] = base_url


def posts(h: Hostile) -> list[Seen]:
    return [s for s in h.seen if s.method == "POST"]


async def test_a_dripped_poll_answer_is_cut_at_the_job_timeout(
        engine_env: EngineEnv, hostile: Hostile) -> None:
    """Finding 3: a poll answer dripped a byte a second (no single read times out) ends at
    the 2 s job timeout, not when the body is done; the job keeps its remote id, so a
    retry continues it."""
    point_at(engine_env, hostile.base_url)
    hostile.route("POST", "/v2/images/generate", json_answer({"jobId": "job1"}))
    hostile.route("GET", "/v2/jobs/", drip(b'{"status": "PROCESSING", "progress": 5}' * 4))
    engine = engine_env.engine(job_timeout=2.0)
    try:
        started = time.monotonic()
        (job,) = await engine.enqueue(FRAME)
        (done,) = await engine.wait([job.id])
        took = time.monotonic() - started
    finally:
        await close_engine(engine)
    assert done.state is JobState.FAILED and done.error_kind == "timeout", done
    assert done.remote_id == "job1" and "job1" in (done.error or "")
    assert took < 2.0 + 1.5, took  # the 160-byte body alone would take 160 s
    assert engine.retry_plan(done) is RetryPlan.CONTINUE
    assert len(posts(hostile)) == 1


async def test_a_slow_image_does_not_hold_the_job_past_its_deadline(
        engine_env: EngineEnv, hostile: Hostile) -> None:
    point_at(engine_env, hostile.base_url)
    image = png_image()
    hostile.route("POST", "/v2/images/generate", json_answer({"jobId": "job1"}))
    hostile.route("GET", "/v2/jobs/", json_answer(
        {"status": "COMPLETED", "result": {"images": [hostile.url("/img/0.png")]}}))
    hostile.route("GET", "/img/", drip(image, every=1.0, content_type="image/png"))
    engine = engine_env.engine(job_timeout=2.0)
    try:
        started = time.monotonic()
        (job,) = await engine.enqueue(FRAME)
        (done,) = await engine.wait([job.id])
        took = time.monotonic() - started
    finally:
        await close_engine(engine)
    assert done.state is JobState.FAILED and done.error_kind == "timeout", done
    assert done.remote_id == "job1"
    assert took < 2.0 + 1.5, took
    assert engine_env.library.tmp_files() == []  # the cut download left no file


async def test_a_listing_of_300_images_for_one_request_stores_none(
        engine_env: EngineEnv, hostile: Hostile) -> None:
    """Finding 2: more result URLs than the model's max_images is a protocol error; none
    is fetched or stored, and the retry continues (no new payment)."""
    point_at(engine_env, hostile.base_url)
    hostile.route("POST", "/v2/images/generate", json_answer({"jobId": "job1"}))
    urls = [hostile.url(f"/img/{n}.png") for n in range(300)]
    hostile.route("GET", "/v2/jobs/", json_answer(
        {"status": "COMPLETED", "result": {"images": urls}}))
    hostile.route("GET", "/img/", json_answer(png_image(), headers={"Content-Type": "image/png"}))
    engine = engine_env.engine()
    try:
        (job,) = await engine.enqueue(FRAME)
        (done,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert done.state is JobState.FAILED and done.error_kind == "protocol", done
    assert "300 images" in (done.error or "")
    assert engine_env.library.items_for_job(job.id) == []
    assert hostile.count("GET", "/img/") == 0
    assert engine.retry_plan(done) is RetryPlan.CONTINUE


async def test_a_key_repeated_back_is_never_stored(
        engine_env: EngineEnv, hostile: Hostile) -> None:
    """Finding 4: "Invalid API key provided: <key>" reaches the database masked; the keys
    of the providers not in use are known for masking too."""
    point_at(engine_env, hostile.base_url)
    key = engine_env.env["NBDESK_APIFRAME_API_KEY"]
    other = engine_env.env["NBDESK_GEMINI_API_KEY"]
    RedactingFilter.clear()
    hostile.route("POST", "/v2/images/generate", json_answer(
        {"message": f"Invalid API key provided: {key} (also {other})"}, status=401))
    engine = engine_env.engine()
    try:
        (job,) = await engine.enqueue(FRAME)
        (done,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert done.state is JobState.FAILED and done.error_kind == "auth"
    assert "Invalid API key provided: ***" in (done.error or ""), done.error
    row = engine_env.library.job(job.id)
    assert key not in repr(row) and other not in repr(row)


async def test_a_keychain_key_of_a_provider_not_in_use_is_masked_too(
        engine_env: EngineEnv, hostile: Hostile, secret_service: object) -> None:
    """A key that lives only in the (real, private) keychain, of a provider this job does
    not use, is known for masking once the engine has started."""
    from nbdesk.core.secrets import SecretStore

    point_at(engine_env, hostile.base_url)
    stored = "gemini-keychain-only-key-5c1e0a9b77"
    del engine_env.env["NBDESK_GEMINI_API_KEY"]
    await asyncio.to_thread(SecretStore(environ=engine_env.env).set, "gemini", stored)
    RedactingFilter.clear()
    hostile.route("POST", "/v2/images/generate", json_answer(
        {"message": f"Invalid API key provided: {stored}"}, status=401))
    engine = engine_env.engine()
    try:
        await engine.start()
        # The start reads every provider's key in the background: wait for that read.
        keys = next(t for t in engine._bg if t.get_name() == "nbdesk-keys")
        await keys
        (job,) = await engine.enqueue(FRAME)
        (done,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert done.state is JobState.FAILED and done.error_kind == "auth"
    assert "Invalid API key provided: ***" in (done.error or ""), done.error
    assert stored not in repr(engine_env.library.job(job.id))


def closed_port() -> str:
    """A loopback address where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("spec", [FREE, GEMINI], ids=["apifree", "gemini"])
async def test_an_offline_job_waits_queued_and_is_sent_once_the_network_is_back(
        engine_env: EngineEnv, spec: JobSpec) -> None:
    """Offline is not a payment: a refused connection leaves the job queued with the
    offline note (not submitting, not interrupted after a restart); once the provider
    listens it completes with exactly one paid request."""
    base = closed_port()
    point_at(engine_env, base)
    engine = engine_env.engine(job_timeout=60.0)
    noted = asyncio.Event()
    engine.subscribe(lambda j: noted.set() if j.note == OFFLINE_NOTE else None)
    try:
        (job,) = await engine.enqueue(spec)
        await asyncio.wait_for(noted.wait(), 10)
        waiting = engine_env.library.job(job.id)
    finally:
        await close_engine(engine)  # (as a SIGKILL would: the persisted state is what counts)
    assert waiting.state is JobState.QUEUED and waiting.note == OFFLINE_NOTE, waiting
    assert engine_env.library.job(job.id).state is JobState.QUEUED

    # The network is back: a server listens at the provider's address.
    port = int(base.rpartition(":")[2])
    image = png_image()
    with Hostile(port=port) as h:
        h.route("POST", "/v1/", json_answer({"code": 200, "resp_data": {"request_id": "r1"}}))
        h.route("GET", "/v1/", json_answer({"code": 200, "resp_data": {
            "request_id": "r1", "status": "success", "image_list": [h.url("/img/0.png")]}}))
        h.route("GET", "/img/", json_answer(image, headers={"Content-Type": "image/png"}))
        h.route("POST", "/v1beta/models/", json_answer(gemini_answer(image)))
        again = engine_env.engine()
        try:
            await again.start()
            (done,) = await again.wait([job.id])
        finally:
            await close_engine(again)
        assert done.state is JobState.COMPLETED, done
        assert len(posts(h)) == 1


def gemini_answer(image: bytes) -> dict[str, object]:
    import base64

    return {"responseId": "resp1", "candidates": [{"content": {"role": "model", "parts": [
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}},
    ]}, "finishReason": "STOP"}]}


async def test_an_offline_job_fails_as_offline_at_the_job_timeout(
        engine_env: EngineEnv) -> None:
    point_at(engine_env, closed_port())
    engine = engine_env.engine(job_timeout=1.0)
    try:
        (job,) = await engine.enqueue(FREE)
        (done,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert done.state is JobState.FAILED and done.error_kind == "offline", done.error
    assert "nothing was sent" in (done.error or "")
    assert engine.retry_plan(done) is RetryPlan.SUBMIT  # not a maybe-billed resubmission


async def test_a_slow_gemini_call_is_cut_at_the_deadline_and_interrupted(
        engine_env: EngineEnv, hostile: Hostile) -> None:
    """The synchronous call is bounded by the job's time too; it may have been billed, so
    the job is interrupted (the user decides), never silently sent again."""
    point_at(engine_env, hostile.base_url)
    hostile.route("POST", "/v1beta/models/", delay(30.0, json_answer(gemini_answer(png_image()))))
    engine = engine_env.engine(job_timeout=1.0, landing_grace=0.5)
    try:
        started = time.monotonic()
        (job,) = await engine.enqueue(GEMINI)
        (done,) = await engine.wait([job.id])
        took = time.monotonic() - started
    finally:
        await close_engine(engine)
    assert done.state is JobState.INTERRUPTED, done
    assert took < 1.0 + 0.5 + 1.5, took
    assert len(posts(hostile)) == 1

