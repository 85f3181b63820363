"""The engine with Gemini (one synchronous call, images inline) against the simulator."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from nbdesk.api.base import InputError
from nbdesk.core.jobs import JobParams, JobSpec, JobState, RetryPlan
from nbdesk.core.library import sha256_file
from nbdesk.sim.gemini import REFUSAL_TEXT
from tests.helpers import EngineEnv, close_engine

pytestmark = pytest.mark.anyio

FLASH = JobSpec(provider="gemini", model="gemini-2.5-flash-image", prompt="a red bicycle")
PRO = JobSpec(provider="gemini", model="gemini-3-pro-image-preview", prompt="a glass whale",
              params=JobParams(aspect_ratio="4:3", resolution="1K", with_text=True))


def write_png(path: Path, color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for the simulator's thread to get somewhere (no event reaches this loop)."""
    deadline = time.monotonic() + 15.0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_job_walks_to_the_library_with_its_signatures(
    engine_env: EngineEnv, tmp_path: Path,
) -> None:
    ref = tmp_path / "ref.png"
    data = write_png(ref)
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(JobSpec(
            provider=PRO.provider, model=PRO.model, prompt=PRO.prompt, params=PRO.params,
            refs=(str(ref),)))
        ref.unlink()  # the library's copy is what gets sent
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    # No poll, no download: the answer brings the image.
    assert engine_env.states(job.id) == [
        "queued", "submitting", "downloading", "completed"]
    (record,) = engine_env.sim.stats.jobs
    assert record.ref_sha256s == [hashlib.sha256(data).hexdigest()]
    assert job.remote_id == record.remote_id and job.cost == 0.134
    (item,) = engine_env.library.items_for_job(job.id)
    assert sha256_file(item.path) == item.sha256 and item.format == "png"
    with Image.open(item.path) as im:
        assert im.size == (item.width, item.height) == (1184, 880)
    assert item.signatures == record.answer_signatures and len(item.signatures) == 2
    assert item.answer_text.startswith("Here is the image")
    assert engine_env.sim.stats.submits["gemini"] == 1
    assert engine_env.library.verify() == [] and engine_env.library.tmp_files() == []


async def test_text_only_answer_fails_the_job_with_that_text(engine_env: EngineEnv) -> None:
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(JobSpec(
            provider="gemini", model=FLASH.model, prompt="something #fail"))
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.FAILED and job.error_kind == "provider_failed"
    assert job.error == REFUSAL_TEXT
    assert engine_env.library.items_for_job(job.id) == []
    assert engine_env.sim.stats.submits["gemini"] == 1


async def test_429_and_503_are_waited_out_and_billed_once(engine_env: EngineEnv) -> None:
    engine_env.sim.config.faults.retry_after = 0.01
    # More refusals than the client's own attempts: the engine waits out the rest.
    engine_env.sim.script("gemini.generate", ["429", "503"] * 4)
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(FLASH)
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    assert engine_env.sim.stats.faults["429"] == 4 and engine_env.sim.stats.faults["503"] == 4
    assert engine_env.sim.stats.submits["gemini"] == 1


async def test_a_lost_answer_is_interrupted_never_resent_and_retry_pays_again(
    engine_env: EngineEnv,
) -> None:
    engine_env.sim.script("gemini.generate", ["reset_after"])
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(FLASH)
        (job,) = await engine.wait([job.id])
        assert job.state is JobState.INTERRUPTED and job.error_kind == "unanswered"
        assert engine_env.sim.stats.requests == 1 and engine_env.sim.stats.submits["gemini"] == 1
        await engine.retry(job.id, resubmit_ok=True)
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED
    assert engine_env.sim.stats.submits["gemini"] == 2  # knowingly: the user retried


async def test_cancel_during_the_call(engine_env: EngineEnv) -> None:
    engine_env.sim.config.faults.slow_seconds = 30.0  # the call hangs until cancelled
    engine_env.sim.script("gemini.generate", ["slow"])
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(FLASH)
        await until(lambda: engine_env.sim.stats.faults["slow"] == 1, "the call to be held")
        job = await engine.cancel(job.id)
        assert job.state is JobState.CANCELLED
        assert job.note and "may still bill" in job.note
        assert engine.busy() == []
    finally:
        await close_engine(engine)
    assert engine_env.library.job(job.id).state is JobState.CANCELLED
    assert engine_env.library.items_for_job(job.id) == []
    assert engine_env.library.tmp_files() == []


async def _stage(engine_env: EngineEnv, spec: JobSpec, **fields: object) -> str:
    """Put a job in the database as a killed process would have left it."""
    (job,) = engine_env.library.add_jobs(spec, [], 1)
    owner = "deadhost:1:dead"
    engine_env.library.claim(job.id, owner, ttl=30)
    engine_env.library.update_job(job.id, owner, lease_expires=time.time() - 1, **fields)
    return job.id


async def test_resume_interrupts_a_job_caught_mid_call(engine_env: EngineEnv) -> None:
    job_id = await _stage(engine_env, FLASH, state=JobState.SUBMITTING)
    engine = engine_env.engine()
    try:
        resumed = await engine.start()
        (job,) = await engine.wait(resumed)
    finally:
        await close_engine(engine)
    assert resumed == [job_id]
    assert job.state is JobState.INTERRUPTED and job.error and "Retry" in job.error
    assert engine_env.sim.stats.requests == 0


async def test_resume_stores_an_answer_kept_on_disk_without_calling_again(
    engine_env: EngineEnv, tmp_path: Path,
) -> None:
    """Killed after the answer was written to disk, before the image was placed."""
    data = write_png(tmp_path / "answer.png")
    job_id = await _stage(engine_env, FLASH, state=JobState.DOWNLOADING, cost=0.039,
                          remote_id="resp-1", turn=({"image": 0},))
    (digest,) = engine_env.library.keep_answer(job_id, [data])
    engine_env.library.update_job(job_id, None, result_urls=(f"answer:0:{digest}",))
    engine = engine_env.engine()
    try:
        resumed = await engine.start()
        (job,) = await engine.wait(resumed)
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    (item,) = engine_env.library.items_for_job(job_id)
    assert item.path.read_bytes() == data and item.cost == 0.039
    assert engine_env.sim.stats.requests == 0
    assert engine_env.library.tmp_files() == [] and engine_env.library.verify() == []


async def test_an_answer_kept_before_its_record_failed_is_stored_by_retry_never_repaid(
    engine_env: EngineEnv, tmp_path: Path,
) -> None:
    """The answer was kept on disk, then writing its record failed (the job failed as an
    internal error, no digests recorded): Retry stores the kept image and asks nothing."""
    data = write_png(tmp_path / "answer.png")
    job_id = await _stage(engine_env, FLASH, state=JobState.FAILED, error_kind="internal",
                          error="internal error: DatabaseLocked", submit_attempts=1)
    engine_env.library.keep_answer(job_id, [data])
    engine = engine_env.engine()
    try:
        await engine.start()
        staged = engine_env.library.job(job_id)
        assert engine.retry_plan(staged) is RetryPlan.RESUBMIT  # what the record alone says
        await engine.retry(job_id)  # not agreed to pay: it must not need to
        (job,) = await engine.wait([job_id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    (item,) = engine_env.library.items_for_job(job_id)
    assert item.path.read_bytes() == data
    assert engine_env.sim.stats.requests == 0


async def test_cancelling_once_the_answer_arrived_keeps_it_for_a_free_retry(
    engine_env: EngineEnv, tmp_path: Path,
) -> None:
    data = write_png(tmp_path / "answer.png")
    job_id = await _stage(engine_env, FLASH, state=JobState.DOWNLOADING, remote_id="resp-1",
                          submit_attempts=1)
    (digest,) = engine_env.library.keep_answer(job_id, [data])
    engine_env.library.update_job(job_id, None, result_urls=(f"answer:0:{digest}",))
    engine = engine_env.engine()
    try:
        cancelled = await engine.cancel(job_id)
        assert cancelled.state is JobState.CANCELLED
        assert engine.retry_plan(cancelled) is RetryPlan.CONTINUE
        await engine.retry(job_id)
        (job,) = await engine.wait([job_id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    assert engine_env.library.items_for_job(job_id)[0].path.read_bytes() == data
    assert engine_env.sim.stats.requests == 0


async def test_unwritable_library_fails_and_retry_stores_without_paying(
    engine_env: EngineEnv,
) -> None:
    images = engine_env.paths.images
    images.rmdir()
    images.write_text("not a folder")  # any write below images/ now fails, even as root
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(FLASH)
        (job,) = await engine.wait([job.id])
        assert job.state is JobState.FAILED and job.error_kind == "storage", job.error
        assert job.error and "no new payment" in job.error
        images.unlink()
        images.mkdir()
        await engine.retry(job.id)
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    assert engine_env.states(job.id)[-2:] == ["downloading", "completed"]
    assert engine_env.sim.stats.submits["gemini"] == 1  # the answer kept on disk was stored
    assert engine_env.library.verify() == [] and engine_env.library.tmp_files() == []


async def test_an_edit_chain_sends_the_history_and_its_signatures_back(
    engine_env: EngineEnv,
) -> None:
    engine = engine_env.engine()
    library = engine_env.library
    sim = engine_env.sim
    try:
        await engine.start()

        async def edit(parent: int | None, prompt: str) -> int:
            refs: tuple[str, ...] = ()
            if parent is not None:
                refs = (str(library.item(parent).path),)  # as the window's Edit does
            spec = JobSpec(provider=PRO.provider, model=PRO.model, prompt=prompt,
                           params=JobParams(resolution="1K"), refs=refs, parent_item=parent)
            (job,) = await engine.enqueue(spec)
            (job,) = await engine.wait([job.id])
            assert job.state is JobState.COMPLETED, job.error
            (item,) = library.items_for_job(job.id)
            return item.id

        a = await edit(None, "a cat")
        b = await edit(a, "make it blue")
        c = await edit(b, "add a hat")
    finally:
        await close_engine(engine)
    first, second, third = sim.stats.jobs
    item_a, item_b, item_c = (library.item(i) for i in (a, b, c))
    assert first.turns == 1 and first.signatures == []
    # The edit of A: A's prompt, then A's image with A's signature, then the new prompt;
    # A's image is not also sent as a reference.
    assert (second.turns, second.n_refs, second.prompt) == (3, 0, "make it blue")
    assert second.signatures == item_a.signatures == first.answer_signatures
    assert second.history_sha256s == [item_a.sha256]
    # The edit of B carries the whole chain: A's and B's answers, each with its signature.
    assert (third.turns, third.n_refs) == (5, 0)
    assert third.signatures == item_a.signatures + item_b.signatures
    assert third.history_sha256s == [item_a.sha256, item_b.sha256]
    assert (item_b.parent_item, item_c.parent_item) == (a, b)
    assert [i.id for i in library.chain(c, 10)] == [a, b, c]
    assert library.children(a) == [b]


async def test_editing_another_providers_image_sends_it_as_a_reference(
    engine_env: EngineEnv,
) -> None:
    engine = engine_env.engine()
    try:
        await engine.start()
        (job,) = await engine.enqueue(JobSpec("apiframe", "nano-banana", "a tree"))
        (job,) = await engine.wait([job.id])
        (parent,) = engine_env.library.items_for_job(job.id)
        (job,) = await engine.enqueue(JobSpec(
            provider="gemini", model=FLASH.model, prompt="in autumn",
            refs=(str(parent.path),), parent_item=parent.id))
        (job,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert job.state is JobState.COMPLETED, job.error
    record = engine_env.sim.stats.jobs[-1]
    assert (record.provider, record.turns, record.n_refs) == ("gemini", 1, 1)
    assert record.ref_sha256s == [parent.sha256]
    assert engine_env.library.items_for_job(job.id)[0].parent_item == parent.id


async def test_gemini_input_is_refused_before_anything_is_written(
    engine_env: EngineEnv,
) -> None:
    engine = engine_env.engine()
    try:
        await engine.start()
        cases = [
            (JobSpec("gemini", FLASH.model, "x", refs=("https://example.com/a.png",)),
             "local files only"),
            (JobSpec("gemini", FLASH.model, "x", JobParams(resolution="2K")), "resolution"),
            (JobSpec("gemini", FLASH.model, "x", parent_item=999), "no image #999"),
        ]
        for spec, message in cases:
            with pytest.raises(InputError, match=message):
                await engine.enqueue(spec)
    finally:
        await close_engine(engine)
    assert engine_env.library.jobs() == [] and engine_env.sim.stats.requests == 0
