"""Both provider clients through real httpx to the loopback simulator."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from nbdesk.api.apiframe import ApiframeProvider, result_urls
from nbdesk.api.apifree import ApifreeProvider
from nbdesk.api.base import (
    AuthError,
    BadRequestError,
    GenerationRequest,
    InputError,
    ProtocolError,
    Reference,
    RemoteState,
    TransientError,
    UnansweredSubmitError,
)
from nbdesk.api.http import RetryPolicy, download_to
from nbdesk.api.images import ImageCheckError, PngStreamCheck, probe_file
from nbdesk.sim import Simulator
from tests.helpers import FakeSleep, SimClock

pytestmark = pytest.mark.anyio


def png_data_uri(size: tuple[int, int] = (64, 48)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def frame(sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy) -> ApiframeProvider:
    return ApiframeProvider(http, "test-key", sim.base_url, policy)


def free(sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy) -> ApifreeProvider:
    return ApifreeProvider(http, "test-key", sim.base_url, policy)


# ------------------------------------------------------------------------- Apiframe


async def test_apiframe_walks_every_status_to_a_real_image(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, tmp_path: Path,
    sim_clock: SimClock,
) -> None:
    client = frame(sim, http, policy)
    request = GenerationRequest(
        model="nano-banana-pro", prompt="a red bicycle", aspect_ratio="16:9",
        resolution="1K", output_format="png", google_search=True,
        references=[Reference(png_data_uri())],
    )
    submitted = await client.submit(request, "key-1")
    record = sim.stats.jobs[-1]
    assert record.params["output_format"] == "png" and record.n_refs == 1
    assert record.idempotency_key == "key-1"

    first = await client.poll(submitted.remote_id)
    assert first.state is RemoteState.QUEUED and first.raw_status == "QUEUED"
    sim_clock.advance(0.1)
    middle = await client.poll(submitted.remote_id)
    assert middle.state is RemoteState.RUNNING and middle.raw_status == "PROCESSING"
    assert middle.progress is not None and 0 <= middle.progress < 100
    sim_clock.advance(1.0)
    done = await client.poll(submitted.remote_id)
    assert done.state is RemoteState.COMPLETED and len(done.urls) == 1
    assert done.cost is not None and done.cost > 0

    got = await download_to(http, done.urls[0], tmp_path / "x.part",
                            origin=sim.base_url, max_bytes=50_000_000)
    info = probe_file(got.path)
    assert info.format == "png" and info.width > info.height  # 16:9 at 1K
    assert abs(info.width * info.height - 1024 * 1024) < 0.1 * 1024 * 1024


@pytest.mark.parametrize("form", ["string", "list", "images"])
async def test_apiframe_accepts_every_result_form(
    form: str, sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
    sim_clock: SimClock,
) -> None:
    sim.config.apiframe_result_form = form
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="x"), f"k-{form}")
    sim_clock.advance(5)
    done = await client.poll(job.remote_id)
    assert done.state is RemoteState.COMPLETED
    assert len(done.urls) == 1 and done.urls[0].startswith(sim.base_url + "/files/")


def test_result_url_shapes() -> None:
    assert result_urls("https://a/x.png") == ("https://a/x.png",)
    assert result_urls(["https://a/1.png", "https://a/2.png"]) == (
        "https://a/1.png", "https://a/2.png")
    assert result_urls({"images": ["https://a/1.png"]}) == ("https://a/1.png",)
    assert result_urls({"images": [{"url": "https://a/1.png"}]}) == ("https://a/1.png",)
    assert result_urls(None) == ()


async def test_apiframe_unknown_status_counts_as_running(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, sim_clock: SimClock,
) -> None:
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="odd #weird"), "w")
    sim_clock.advance(10)
    result = await client.poll(job.remote_id)
    assert result.state is RemoteState.RUNNING and result.raw_status == "WEIRD_STATE"


async def test_apiframe_failed_job_carries_the_reason(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, sim_clock: SimClock,
) -> None:
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="no #fail"), "f")
    sim_clock.advance(10)
    result = await client.poll(job.remote_id)
    assert result.state is RemoteState.FAILED
    assert result.error is not None and "content policy" in result.error


async def test_apiframe_401_is_an_auth_error_and_not_retried(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, fake_sleep: FakeSleep,
) -> None:
    sim.config.keys = {"apiframe": {"good"}, "apifree": {"good"}}
    client = frame(sim, http, policy)
    with pytest.raises(AuthError, match="401"):
        await client.submit(GenerationRequest(model="nano-banana", prompt="x"), "k")
    assert fake_sleep.calls == [] and sim.stats.submits["apiframe"] == 0


async def test_apiframe_400_shows_the_providers_message_verbatim(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    client = frame(sim, http, policy)
    bad_ref = Reference("data:image/png;base64," + base64.b64encode(b"not a png").decode())
    with pytest.raises(BadRequestError) as caught:
        await client.submit(
            GenerationRequest(model="nano-banana", prompt="x", references=[bad_ref]), "k")
    assert caught.value.status == 400
    assert "image" in caught.value.message.lower()
    assert sim.stats.submits["apiframe"] == 0


async def test_apiframe_refuses_bad_input_before_sending(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    client = frame(sim, http, policy)
    cases = [
        GenerationRequest(model="nano-banana", prompt="x" * 2001),
        GenerationRequest(model="nano-banana", prompt="   "),
        GenerationRequest(model="nano-banana", prompt="x", aspect_ratio="21:9"),
        GenerationRequest(model="nano-banana", prompt="x", resolution="4K"),
        GenerationRequest(model="nano-banana", prompt="x", output_format="gif"),
        GenerationRequest(model="nano-banana-9", prompt="x"),
        GenerationRequest(model="nano-banana", prompt="x",
                          references=[Reference("https://e.com/a.png")] * 4),
    ]
    for request in cases:
        with pytest.raises(InputError):
            await client.submit(request, "k")
    assert sim.stats.requests == 0


async def test_apiframe_retries_429_500_and_reset_honouring_retry_after(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, fake_sleep: FakeSleep,
) -> None:
    sim.config.faults.retry_after = 3.0
    sim.script("apiframe.submit", ["429", "500", "reset", "503"])
    client = frame(sim, http, policy)
    result = await client.submit(GenerationRequest(model="nano-banana", prompt="x"), "k-r")
    assert result.remote_id
    assert fake_sleep.calls[0] == 3.0  # Retry-After of the 429
    assert 0.75 <= fake_sleep.calls[1] <= 1.0  # backoff 0.5 * 2**1 with jitter
    assert 1.5 <= fake_sleep.calls[2] <= 2.0
    assert fake_sleep.calls[3] == 3.0  # 503 carries Retry-After too
    assert sim.stats.submits["apiframe"] == 1
    assert sim.stats.faults["429"] == 1 and sim.stats.faults["reset"] == 1


async def test_apiframe_resends_the_same_idempotency_key_after_a_lost_answer(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    # The job is created, then the connection is reset before the answer arrives;
    # then a malformed answer. Each retry reuses the key: one paid job.
    sim.script("apiframe.submit", ["reset_after", "malformed"])
    client = frame(sim, http, policy)
    result = await client.submit(GenerationRequest(model="nano-banana", prompt="x"), "same")
    assert sim.stats.submits["apiframe"] == 1
    assert sim.stats.replays == 2
    assert sim.stats.jobs[0].remote_id == result.remote_id


async def test_apiframe_poll_malformed_json_is_a_protocol_error(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="x"), "m")
    sim.script("apiframe.poll", ["malformed"])
    with pytest.raises(ProtocolError, match="expected JSON"):
        await client.poll(job.remote_id)
    assert (await client.poll(job.remote_id)).state is not RemoteState.FAILED


async def test_poll_of_an_unknown_job_is_refused(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    with pytest.raises(BadRequestError):
        await frame(sim, http, policy).poll("no-such-job")


# ------------------------------------------------------------------------- APIFree


@pytest.mark.parametrize("style", ["short", "long"])
async def test_apifree_walks_every_status(
    style: str, sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
    sim_clock: SimClock,
) -> None:
    sim.config.apifree_status_style = style
    client = free(sim, http, policy)
    request = GenerationRequest(
        model="google/nano-banana-pro", prompt="a chalkboard", aspect_ratio="21:9",
        resolution="2K", cache_key="c-1", references=[Reference(png_data_uri())] * 2,
    )
    job = await client.submit(request, "ignored")
    record = sim.stats.jobs[-1]
    assert record.idempotency_key is None and record.n_refs == 2
    assert record.params["cache_key"] == "c-1"
    seen = [(await client.poll(job.remote_id)).raw_status]
    sim_clock.advance(0.1)
    seen.append((await client.poll(job.remote_id)).raw_status)
    sim_clock.advance(1)
    done = await client.poll(job.remote_id)
    seen.append(done.raw_status)
    expected = {"short": ["processing", "processing", "success"],
                "long": ["queuing", "processing", "completed"]}[style]
    assert seen == expected
    assert done.state is RemoteState.COMPLETED and done.urls and done.cost


@pytest.mark.parametrize("style", ["short", "long"])
async def test_apifree_failed_status_in_both_styles(
    style: str, sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
    sim_clock: SimClock,
) -> None:
    sim.config.apifree_status_style = style
    client = free(sim, http, policy)
    job = await client.submit(GenerationRequest(model="google/nano-banana-pro",
                                                prompt="#fail"), "x")
    sim_clock.advance(10)
    result = await client.poll(job.remote_id)
    assert result.state is RemoteState.FAILED
    assert result.raw_status == {"short": "error", "long": "failed"}[style]
    assert result.error and "content policy" in result.error


async def test_apifree_error_inside_http_200_envelope(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    sim.config.apifree_errors_in_200 = True
    client = free(sim, http, policy)
    bad = Reference("data:image/png;base64," + base64.b64encode(b"nope").decode())
    with pytest.raises(BadRequestError) as caught:
        await client.submit(GenerationRequest(model="google/nano-banana-pro", prompt="x",
                                              references=[bad]), "k")
    assert caught.value.message and "image" in caught.value.message.lower()
    assert sim.stats.submits["apifree"] == 0


async def test_apifree_401(sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy) -> None:
    sim.config.keys = {"apiframe": set(), "apifree": {"good"}}
    with pytest.raises(AuthError):
        await free(sim, http, policy).submit(
            GenerationRequest(model="google/nano-banana-pro", prompt="x"), "k")


async def test_apifree_retries_refusals_but_never_repeats_an_unanswered_submit(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, fake_sleep: FakeSleep,
) -> None:
    client = free(sim, http, policy)
    request = GenerationRequest(model="google/nano-banana-pro", prompt="x")
    sim.script("apifree.submit", ["429", "503"])
    assert (await client.submit(request, "k")).remote_id
    assert len(fake_sleep.calls) == 2 and sim.stats.submits["apifree"] == 1

    for outcome in ["reset_after", "reset", "500", "malformed"]:
        before = sim.stats.requests
        sim.script("apifree.submit", [outcome])
        with pytest.raises(UnansweredSubmitError):
            await client.submit(request, "k")
        assert sim.stats.requests == before + 1, f"{outcome} was repeated"


# ------------------------------------------------------------------------- downloads


async def test_download_refuses_oversize_and_leaves_no_file(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, tmp_path: Path,
    sim_clock: SimClock,
) -> None:
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="x"), "d")
    sim_clock.advance(5)
    url = (await client.poll(job.remote_id)).urls[0]
    dest = tmp_path / "big.part"
    with pytest.raises(ProtocolError, match="limit"):
        await download_to(http, url, dest,
                          origin=sim.base_url, max_bytes=1000)
    assert not dest.exists()


async def test_truncated_download_is_transient_and_leaves_no_file(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, tmp_path: Path,
    sim_clock: SimClock,
) -> None:
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="x"), "t")
    sim_clock.advance(5)
    url = (await client.poll(job.remote_id)).urls[0]
    sim.script("download", ["truncate"])
    dest = tmp_path / "t.part"
    with pytest.raises(TransientError):
        await download_to(http, url, dest,
                          origin=sim.base_url, max_bytes=50_000_000)
    assert not dest.exists()
    got = await download_to(http, url, dest,
                            origin=sim.base_url, max_bytes=50_000_000)
    assert probe_file(got.path).width > 0


@pytest.mark.usefixtures("hashing")
async def test_download_shows_every_byte_to_its_check_and_proves_a_png(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, tmp_path: Path,
    sim_clock: SimClock,
) -> None:
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(
        model="nano-banana", prompt="x", output_format="png"), "t")
    sim_clock.advance(5)
    url = (await client.poll(job.remote_id)).urls[0]

    class Recorder(PngStreamCheck):
        def __init__(self) -> None:
            super().__init__()
            self.seen = bytearray()

        def feed(self, block: bytes) -> None:
            self.seen += block
            super().feed(block)

    check = Recorder()
    got = await download_to(http, url, tmp_path / "p.part",
                            origin=sim.base_url, max_bytes=50_000_000,
                            chunk=16_384, check=check)
    assert bytes(check.seen) == got.path.read_bytes()
    proof = check.result()
    assert proof.size == got.size
    assert probe_file(got.path, png=proof) == probe_file(got.path)

    sim.script("download", ["cut"])
    check = PngStreamCheck()
    got = await download_to(http, url, tmp_path / "c.part",
                            origin=sim.base_url, max_bytes=50_000_000, check=check)
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        check.result()
    with pytest.raises(ImageCheckError, match="truncated or damaged"):
        probe_file(got.path)


async def test_download_that_is_not_an_image_is_detected(
    sim: Simulator, http: httpx.AsyncClient, tmp_path: Path,
) -> None:
    got = await download_to(http, sim.base_url + "/_sim/stats", tmp_path / "j.part",
                            origin=sim.base_url, max_bytes=1_000_000)
    with pytest.raises(ImageCheckError):
        probe_file(got.path)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.png", "javascript:alert(1)"])
async def test_download_only_from_http_urls(
    url: str, http: httpx.AsyncClient, tmp_path: Path,
) -> None:
    with pytest.raises(ProtocolError, match="not http"):
        await download_to(http, url, tmp_path / "x.part", origin="https://api.example.com",
                          max_bytes=10)


def test_protocol_errors_for_html_and_wrong_shapes() -> None:
    from nbdesk.api.http import parse_json, raise_for_status

    html = httpx.Response(502, text="<html><body>Bad gateway</body></html>",
                          headers={"content-type": "text/html"})
    with pytest.raises(TransientError, match="HTML page"):
        raise_for_status(html, "status")
    ok_html = httpx.Response(200, text="<!doctype html><p>hi</p>",
                             headers={"content-type": "text/html"})
    with pytest.raises(ProtocolError, match="HTML page"):
        parse_json(ok_html, "status")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        ApiframeProvider.parse_job(["a", "list"])
    with pytest.raises(ProtocolError, match="no image URL"):
        ApiframeProvider.parse_job({"status": "COMPLETED", "result": {"nothing": 1}})


def _open_handles(path: Path) -> list[str]:
    """This process's file descriptors that point at ``path`` (open or deleted)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target in (str(path), f"{path} (deleted)"):
            found.append(target)
    return found


@pytest.fixture(params=["hashed apart", "hashed by the writer"])
def hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a download is hashed: on a thread beside the writing one (large files),
    or on the writing thread itself (small ones)."""
    import nbdesk.api.http

    apart = request.param == "hashed apart"
    monkeypatch.setattr(nbdesk.api.http, "_HASH_APART_OVER", -1 if apart else 1 << 40)
    return str(request.param)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.usefixtures("hashing")
async def test_a_cancelled_download_leaves_no_handle_and_no_file(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, tmp_path: Path,
    sim_clock: SimClock,
) -> None:
    """Cancel the download after 0, 1, 2, ... event-loop turns until it completes: each
    await point in turn (the temp file being opened on the writer thread, blocks queued,
    the back-pressure wait, the final fsync). Once the task has unwound, no descriptor
    points at the temp file and the file is gone."""
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="x",
                                                output_format="png"), "c")
    sim_clock.advance(5)
    url = (await client.poll(job.remote_id)).urls[0]
    dest = tmp_path / "c.part"
    cancelled = 0
    for turns in range(5000):
        task = asyncio.create_task(
            download_to(http, url, dest,
                        origin=sim.base_url, max_bytes=50_000_000, chunk=16_384,
                        max_queued=32_768)
        )
        for _ in range(turns):
            await asyncio.sleep(0)  # one loop turn, not a timed wait
            if task.done():
                break
        if task.done():
            got = task.result()
            assert got.path == dest and dest.stat().st_size == got.size
            assert _open_handles(dest) == []
            break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled += 1
        assert not dest.exists(), f"cancelled after {turns} turn(s): the temp file remains"
        assert _open_handles(dest) == [], f"cancelled after {turns} turn(s): a handle leaks"
    else:
        pytest.fail("the download never completed")
    assert cancelled > 10


@pytest.mark.usefixtures("hashing")
async def test_a_failing_content_check_fails_the_download_and_leaves_nothing(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, tmp_path: Path,
    sim_clock: SimClock,
) -> None:
    """The hashing thread (which feeds the check) failing is the download failing: its
    error reaches the caller, the writing thread stops and removes the file."""
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="x",
                                                output_format="png"), "f")
    sim_clock.advance(5)
    url = (await client.poll(job.remote_id)).urls[0]

    class Broken:
        """Raises once it has been shown more than ``after`` bytes."""

        def __init__(self, after: int) -> None:
            self.after = after

        def feed(self, block: bytes) -> None:
            self.after -= len(block)
            if self.after < 0:
                raise RuntimeError("the check broke")

    dest = tmp_path / "f.part"
    size = (await download_to(http, url, dest,
                              origin=sim.base_url, max_bytes=50_000_000,
                              check=Broken(10**9))).size
    assert size == dest.stat().st_size
    for after in (0, size // 3, size - 1):  # the first block, one in the middle, the last
        with pytest.raises(RuntimeError, match="the check broke"):
            await download_to(http, url, dest,
                              origin=sim.base_url, max_bytes=50_000_000, chunk=16_384,
                              max_queued=32_768, check=Broken(after))
        assert not dest.exists() and _open_handles(dest) == []


@pytest.mark.usefixtures("hashing")
async def test_a_download_that_cannot_be_written_raises_oserror(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, tmp_path: Path,
    sim_clock: SimClock,
) -> None:
    """The writer thread's failure (here: no such folder) reaches the caller as the
    OSError it is (the engine reports it as a storage problem), and nothing is left."""
    client = frame(sim, http, policy)
    job = await client.submit(GenerationRequest(model="nano-banana", prompt="x"), "w")
    sim_clock.advance(5)
    url = (await client.poll(job.remote_id)).urls[0]
    dest = tmp_path / "missing" / "w.part"
    with pytest.raises(FileNotFoundError):
        await download_to(http, url, dest,
                          origin=sim.base_url, max_bytes=50_000_000, chunk=16_384)
    assert not dest.exists() and _open_handles(dest) == []
    # the same client downloads normally afterwards (the connection was released)
    got = await download_to(http, url, tmp_path / "ok.part",
                            origin=sim.base_url, max_bytes=50_000_000)
    assert probe_file(got.path).width > 0
