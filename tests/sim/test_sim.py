"""The loopback simulator, over real HTTP with httpx.

Job timings are read at poll time, so most tests walk a job through its states by
changing ``sim.config`` instead of sleeping: a long ``queue_seconds`` holds a job in
QUEUED, ``queue_seconds=0`` with a long ``job_seconds`` holds it in PROCESSING, and
``job_seconds=0`` completes it.  One test lets the clock run for real.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from nbdesk.api.capabilities import APIFRAME, APIFREE
from nbdesk.sim import DEMO_KEY, Faults, ManualClock, SimConfig, Simulator
from nbdesk.sim.images import image_size
from nbdesk.sim.jobs import FAIL_REASON, JobToken

AF_KEY = {"X-API-Key": DEMO_KEY}
FR_KEY = {"Authorization": f"Bearer {DEMO_KEY}"}
PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
CONTENT_TYPE = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
LONG = 3600.0


# --------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture
def sim() -> Iterator[Simulator]:
    # Held in QUEUED until a test moves the clock by changing the timings.
    with Simulator(SimConfig(queue_seconds=LONG, job_seconds=LONG)) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10) as c:
        yield c


def hold_queued(sim: Simulator) -> None:
    sim.config.queue_seconds, sim.config.job_seconds = LONG, LONG


def hold_processing(sim: Simulator) -> None:
    sim.config.queue_seconds, sim.config.job_seconds = 0.0, LONG


def finish(sim: Simulator) -> None:
    sim.config.queue_seconds, sim.config.job_seconds = 0.0, 0.0


def af_submit(client: httpx.Client, prompt: str = "a lighthouse at dusk", *,
              headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
    model = params.pop("model", "nano-banana")
    body: dict[str, Any] = {"prompt": prompt, "model": model}
    if params:
        body["nanoBananaParams"] = params
    return client.post("/v2/images/generate", json=body, headers=headers or AF_KEY)


def af_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v2/jobs/{job_id}", headers=AF_KEY)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def fr_submit(client: httpx.Client, prompt: str = "a red fox in snow",
              **fields: Any) -> httpx.Response:
    body = {"model": "google/nano-banana-pro", "prompt": prompt, **fields}
    return client.post("/v1/image/submit", json=body, headers=FR_KEY)


def fr_result(client: httpx.Client, request_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/image/{request_id}/result", headers=FR_KEY)
    assert r.status_code == 200, r.text
    env: dict[str, Any] = r.json()
    assert env["code"] == 200
    assert set(env) == {"code", "code_msg", "trace_id", "resp_data"}
    data: dict[str, Any] = env["resp_data"]
    return data


def result_urls(result: Any) -> list[str]:
    if isinstance(result, str):
        return [result]
    if isinstance(result, list):
        return list(result)
    return list(result["images"])


def decode_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def data_uri(fmt: str = "PNG", size: tuple[int, int] = (8, 8)) -> tuple[str, bytes]:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    raw = buf.getvalue()
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode(), raw


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Re-check a condition that depends on the server's clock, with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# --------------------------------------------------------------------------- geometry, tokens


@pytest.mark.parametrize(
    ("ratio", "resolution", "size"),
    [
        ("1:1", None, (1024, 1024)),
        ("1:1", "2K", (2048, 2048)),
        ("16:9", "1K", (1360, 768)),
        ("9:16", "1K", (768, 1360)),
        ("21:9", "4K", (6256, 2688)),
        ("4:3", "1K", (1184, 880)),
    ],
)
def test_image_size_keeps_area_and_multiples_of_16(
    ratio: str, resolution: str | None, size: tuple[int, int]
) -> None:
    w, h = image_size(ratio, resolution)
    assert (w, h) == size
    assert w % 16 == 0 and h % 16 == 0
    base = {None: 1024, "1K": 1024, "2K": 2048, "4K": 4096}[resolution]
    assert abs(w * h / base**2 - 1) < 0.03


def test_token_round_trip_and_garbling() -> None:
    token = JobToken("apifree", "google/nano-banana-pro", "21:9", "4K", "png",
                     1_700_000_000_123, 42, 7, fail=True, prompt_head="ünïcode prompt")
    encoded = token.encode()
    assert encoded.replace("-", "").replace("_", "").isalnum()  # URL-safe, no padding
    assert JobToken.decode(encoded) == token
    assert token.cost == 0.24
    flipped = ("B" if encoded[10] == "A" else "A")
    for garbled in (encoded[:-3], encoded[:10] + flipped + encoded[11:], "nope", "", "%%%"):
        assert JobToken.decode(garbled) is None


# --------------------------------------------------------------------------- Apiframe


@pytest.mark.parametrize(
    ("model", "ratio", "resolution", "fmt"),
    [
        ("nano-banana", None, None, None),  # all defaults: 1:1, 1K, jpg
        ("nano-banana", "16:9", None, "png"),
        ("nano-banana-pro", "9:16", "2K", "webp"),
    ],
)
def test_apiframe_happy_path_through_every_status(
    sim: Simulator, client: httpx.Client, model: str, ratio: str | None,
    resolution: str | None, fmt: str | None,
) -> None:
    params: dict[str, Any] = {"model": model, "google_search": False}
    if ratio:
        params["aspect_ratio"] = ratio
    if resolution:
        params["resolution"] = resolution
    if fmt:
        params["output_format"] = fmt
    r = af_submit(client, "a lighthouse at dusk", **params)
    assert r.status_code == 202
    assert r.json() == {"jobId": r.json()["jobId"], "status": "QUEUED"}
    job_id = r.json()["jobId"]

    queued = af_job(client, job_id)
    assert set(queued) == {"id", "jobId", "status", "progress", "result", "error",
                           "creditCost", "createdAt", "completedAt"}
    assert queued["id"] == queued["jobId"] == job_id
    assert (queued["status"], queued["progress"], queued["result"]) == ("QUEUED", 0, None)
    assert queued["completedAt"] is None and queued["error"] is None
    assert queued["createdAt"].endswith("Z")
    # Not downloadable before completion.
    ext = fmt or "jpg"
    assert client.get(f"/files/{job_id}/0.{ext}").status_code == 404

    hold_processing(sim)
    running = af_job(client, job_id)
    assert running["status"] == "PROCESSING"
    assert 1 <= running["progress"] <= 99 and running["result"] is None

    finish(sim)
    done = af_job(client, job_id)
    assert done["status"] == "COMPLETED" and done["progress"] == 100
    assert done["creditCost"] == 0.039 and done["error"] is None
    assert done["completedAt"] is not None and done["completedAt"] >= done["createdAt"]
    (url,) = result_urls(done["result"])
    assert url == f"{sim.base_url}/files/{job_id}/0.{ext}"

    img_resp = client.get(url)
    assert img_resp.status_code == 200
    assert img_resp.headers["content-type"] == CONTENT_TYPE[ext]
    assert int(img_resp.headers["content-length"]) == len(img_resp.content)
    img = decode_image(img_resp.content)
    assert img.format == PIL_FORMAT[ext]
    assert img.size == image_size(ratio or "1:1", resolution)

    # The same job renders the same bytes again (cache or not).
    assert client.get(url).content == img_resp.content
    snap = sim.stats.snapshot()
    assert snap["submits"] == {"apiframe": 1, "apifree": 0, "gemini": 0}
    assert snap["downloads"] == 2
    assert snap["polls"]["apiframe"] == 3
    (rec,) = snap["jobs"]
    assert rec["provider"] == "apiframe" and rec["remote_id"] == job_id
    assert rec["prompt"] == "a lighthouse at dusk" and rec["model"] == model
    assert rec["params"]["google_search"] is False and rec["answered"] is True
    assert rec["n_refs"] == 0 and rec["idempotency_key"] is None


def test_apiframe_progress_runs_on_the_real_clock(sim: Simulator, client: httpx.Client) -> None:
    sim.config.queue_seconds, sim.config.job_seconds = 0.25, 0.6
    job_id = af_submit(client).json()["jobId"]
    seen: list[tuple[str, int]] = []

    def completed() -> bool:
        job = af_job(client, job_id)
        seen.append((job["status"], job["progress"]))
        return bool(job["status"] == "COMPLETED")

    wait_until(completed)
    statuses = [s for s, _ in seen]
    progress = [p for _, p in seen]
    assert statuses[0] == "QUEUED" and "PROCESSING" in statuses
    assert statuses == sorted(statuses, key=["QUEUED", "PROCESSING", "COMPLETED"].index)
    assert progress == sorted(progress) and progress[-1] == 100


def test_manual_clock_moves_jobs_exactly(sim: Simulator, client: httpx.Client) -> None:
    clock = ManualClock(start=1_800_000_000.0)
    sim.clock = clock
    sim.config.queue_seconds, sim.config.job_seconds = 1.0, 4.0
    job_id = af_submit(client).json()["jobId"]
    rid = fr_submit(client).json()["resp_data"]["request_id"]
    assert af_job(client, job_id)["createdAt"] == "2027-01-15T08:00:00.000Z"
    clock.advance(0.999)
    assert (af_job(client, job_id)["status"], af_job(client, job_id)["progress"]) == ("QUEUED", 0)
    clock.advance(2.001)  # 3 s of 4
    job = af_job(client, job_id)
    assert (job["status"], job["progress"]) == ("PROCESSING", 75)
    assert fr_result(client, rid)["status"] == "processing"
    clock.advance(1.0)
    job = af_job(client, job_id)
    assert (job["status"], job["progress"]) == ("COMPLETED", 100)
    assert job["completedAt"] == "2027-01-15T08:00:04.000Z"
    assert fr_result(client, rid)["status"] == "completed"  # second job: the "long" style


@pytest.mark.parametrize("form", ["string", "list", "images"])
def test_apiframe_result_forms(sim: Simulator, client: httpx.Client, form: str) -> None:
    sim.config.apiframe_result_form = form
    finish(sim)
    job_id = af_submit(client).json()["jobId"]
    result = af_job(client, job_id)["result"]
    url = f"{sim.base_url}/files/{job_id}/0.jpg"
    expected = {"string": url, "list": [url], "images": {"images": [url]}}[form]
    assert result == expected


def test_apiframe_result_form_rotates_per_job(sim: Simulator, client: httpx.Client) -> None:
    finish(sim)
    ids = [af_submit(client, f"job {i}").json()["jobId"] for i in range(4)]
    kinds = [type(af_job(client, i)["result"]).__name__ for i in ids]
    assert kinds == ["str", "list", "dict", "str"]
    # A job keeps its form on every poll.
    assert type(af_job(client, ids[1])["result"]) is list


def test_apiframe_auth(sim: Simulator, client: httpx.Client) -> None:
    unauthorized = {"error": {"code": "UNAUTHORIZED", "message": "Invalid or missing API key"}}
    r = client.post("/v2/images/generate", json={"prompt": "x", "model": "nano-banana"})
    assert (r.status_code, r.json()) == (401, unauthorized)
    sim.config.keys = {"apiframe": {"afk_good"}}
    assert af_submit(client, headers={"X-API-Key": "afk_bad"}).status_code == 401
    r = af_submit(client, headers={"X-API-Key": "afk_good"})
    assert r.status_code == 202
    r2 = client.get(f"/v2/jobs/{r.json()['jobId']}", headers={"X-API-Key": "afk_bad"})
    assert (r2.status_code, r2.json()) == (401, unauthorized)
    # The other provider still takes any key.
    assert fr_submit(client).json()["code"] == 200
    assert sim.stats.submits == {"apiframe": 1, "apifree": 1, "gemini": 0}


def test_apiframe_unknown_and_garbled_ids(sim: Simulator, client: httpx.Client) -> None:
    finish(sim)
    job_id = af_submit(client).json()["jobId"]
    apifree_id = fr_submit(client).json()["resp_data"]["request_id"]
    for bad in ("nope", job_id[:-4], job_id[:20] + "AAAA" + job_id[24:], apifree_id):
        r = client.get(f"/v2/jobs/{bad}", headers=AF_KEY)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "NOT_FOUND"
    assert client.get(f"/files/{job_id[:-4]}/0.jpg").status_code == 404
    assert client.get(f"/files/{job_id}/0.png").status_code == 404  # wrong format
    assert client.get(f"/files/{job_id}/1.jpg").status_code == 404  # one image per job


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "", "model": "nano-banana"}, "prompt must be between 1 and 2000 characters"),
        ({"prompt": "x" * 2001, "model": "nano-banana"},
         "prompt must be between 1 and 2000 characters"),
        ({"model": "nano-banana"}, "prompt must be between 1 and 2000 characters"),
        ({"prompt": "x", "model": "dall-e"}, "unknown model 'dall-e'"),
        ({"prompt": "x", "model": "nano-banana", "nanoBananaParams": {"output_format": "gif"}},
         "output_format must be one of: jpg, png, webp"),
        ({"prompt": "x", "model": "nano-banana", "nanoBananaParams": {"aspect_ratio": "21:9"}},
         "aspect_ratio must be one of: 1:1, 3:4, 4:3, 9:16, 16:9 for model nano-banana"),
        ({"prompt": "x", "model": "nano-banana", "nanoBananaParams": {"resolution": "2K"}},
         "resolution is not supported by model nano-banana"),
        ({"prompt": "x", "model": "nano-banana-pro", "nanoBananaParams": {"resolution": "8K"}},
         "resolution must be one of: 1K, 2K, 4K"),
        ({"prompt": "x", "model": "nano-banana",
          "nanoBananaParams": {"image_input": ["https://e.com/a.png"] * 4}},
         "image_input accepts at most 3 images for model nano-banana"),
        ({"prompt": "x", "model": "nano-banana",
          "nanoBananaParams": {"image_input": "ftp://e.com/a.png"}},
         "image_input[0] must be an http(s) URL or a data:image/...;base64, URI"),
        ({"prompt": "x", "model": "nano-banana",
          "nanoBananaParams": {"image_input": "data:image/png;base64,bm90IGFuIGltYWdl"}},
         "image_input[0] is not a valid image"),
        ({"prompt": "x", "model": "nano-banana",
          "nanoBananaParams": {"image_input": "data:image/png;base64,@@@"}},
         "image_input[0] is not valid base64"),
        ({"prompt": "x", "model": "nano-banana", "nanoBananaParams": {"google_search": "yes"}},
         "google_search must be a boolean"),
        ([1, 2], "request body must be a JSON object"),
    ],
)
def test_apiframe_validation(sim: Simulator, client: httpx.Client, body: Any,
                             message: str) -> None:
    r = client.post("/v2/images/generate", json=body, headers=AF_KEY)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "INVALID_REQUEST"
    assert err["message"].startswith(message)
    assert sim.stats.submits["apiframe"] == 0 and sim.stats.jobs == []


def test_apiframe_body_not_json(sim: Simulator, client: httpx.Client) -> None:
    r = client.post("/v2/images/generate", content=b"prompt=hello", headers=AF_KEY)
    assert r.status_code == 400
    error = {"code": "INVALID_REQUEST", "message": "request body must be JSON"}
    assert r.json() == {"error": error}


def test_apiframe_references_are_checked_and_hashed(sim: Simulator,
                                                    client: httpx.Client) -> None:
    png_uri, png_raw = data_uri("PNG")
    jpg_uri, jpg_raw = data_uri("JPEG", (16, 12))
    refs = [png_uri, "https://example.com/input.jpg", jpg_uri]
    r = af_submit(client, image_input=refs)
    assert r.status_code == 202
    r = af_submit(client, image_input="https://example.com/one.jpg")  # the seed's plain string
    assert r.status_code == 202
    first, second = sim.stats.jobs
    assert first.n_refs == 3
    assert first.ref_sha256s == [hashlib.sha256(png_raw).hexdigest(), None,
                                 hashlib.sha256(jpg_raw).hexdigest()]
    assert "image_input" not in first.params
    assert second.n_refs == 1 and second.ref_sha256s == [None]


def test_apiframe_idempotent_replay(sim: Simulator, client: httpx.Client) -> None:
    headers = {**AF_KEY, "Idempotency-Key": "4b1c7e0e-0000-4000-8000-000000000001"}
    first = af_submit(client, headers=headers)
    again = af_submit(client, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["jobId"] == first.json()["jobId"]
    other = af_submit(client, headers={**AF_KEY, "Idempotency-Key": "another"})
    assert other.json()["jobId"] != first.json()["jobId"]
    plain = af_submit(client)
    assert plain.json()["jobId"] not in (first.json()["jobId"], other.json()["jobId"])
    snap = sim.stats.snapshot()
    assert snap["submits"]["apiframe"] == 3 and snap["replays"] == 1
    assert [j["idempotency_key"] for j in snap["jobs"]] == [headers["Idempotency-Key"],
                                                            "another", None]


def test_concurrent_duplicates_make_one_job(sim: Simulator) -> None:
    headers = {**AF_KEY, "Idempotency-Key": "same-key"}

    def submit(_: int) -> str:
        with httpx.Client(base_url=sim.base_url) as c:
            job_id: str = af_submit(c, headers=headers).json()["jobId"]
            return job_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(submit, range(8)))
    assert len(ids) == 1
    assert (sim.stats.submits["apiframe"], sim.stats.replays) == (1, 7)


def test_chunked_request_body(sim: Simulator, client: httpx.Client) -> None:
    body = json.dumps({"prompt": "chunked", "model": "nano-banana"}).encode()
    r = client.post("/v2/images/generate", headers=AF_KEY,
                    content=iter([body[:10], body[10:]]))
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 202
    assert sim.stats.jobs[0].prompt == "chunked"
    assert af_submit(client).status_code == 202  # the connection is still in sync


# --------------------------------------------------------------------------- APIFree


@pytest.mark.parametrize(
    ("style", "statuses"),
    [
        ("short", ["processing", "processing", "success"]),
        ("long", ["queuing", "processing", "completed"]),
    ],
)
def test_apifree_happy_path_through_every_status(
    sim: Simulator, client: httpx.Client, style: str, statuses: list[str]
) -> None:
    sim.config.apifree_status_style = style
    r = fr_submit(client, aspect_ratio="21:9", resolution="2K", cache_key="ck-1")
    assert r.status_code == 200
    env = r.json()
    assert env["code"] == 200 and env["code_msg"] == "Success" and env["trace_id"]
    assert env["resp_data"] == {"request_id": env["resp_data"]["request_id"], "time": None}
    rid = env["resp_data"]["request_id"]

    seen = []
    for move in (hold_queued, hold_processing, finish):
        move(sim)
        data = fr_result(client, rid)
        assert data["request_id"] == rid
        seen.append(data["status"])
        if move is not finish:
            assert data["image_list"] == [] and data["usage"] == {"cost": 0}
            assert client.get(f"/files/{rid}/0.png").status_code == 404
    assert seen == statuses
    assert "error" not in data and data["usage"] == {"cost": 0.039}
    (url,) = data["image_list"]
    assert url == f"{sim.base_url}/files/{rid}/0.png"
    resp = client.get(url)
    assert resp.headers["content-type"] == "image/png"
    img = decode_image(resp.content)
    assert (img.format, img.size) == ("PNG", image_size("21:9", "2K"))
    (rec,) = sim.stats.jobs
    assert rec.provider == "apifree" and rec.remote_id == rid
    assert rec.params == {"aspect_ratio": "21:9", "resolution": "2K", "cache_key": "ck-1"}
    assert sim.stats.submits["apifree"] == 1 and sim.stats.downloads == 1


def test_apifree_status_style_rotates_per_job(sim: Simulator, client: httpx.Client) -> None:
    finish(sim)
    ids = [fr_submit(client, f"job {i}").json()["resp_data"]["request_id"] for i in range(3)]
    assert [fr_result(client, i)["status"] for i in ids] == ["success", "completed", "success"]


def test_apifree_4k_cost_and_defaults(sim: Simulator, client: httpx.Client) -> None:
    finish(sim)
    rid = fr_submit(client, resolution="4K").json()["resp_data"]["request_id"]
    assert fr_result(client, rid)["usage"] == {"cost": 0.24}
    token = JobToken.decode(rid)
    assert token is not None
    assert (token.aspect_ratio, token.resolution, token.output_format) == ("1:1", "4K", "png")


def test_apifree_auth(sim: Simulator, client: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        r = client.post("/v1/image/submit", json={"prompt": "x"}, headers=headers)
        assert r.status_code == 401
        assert r.json()["code"] == 401 and r.json()["code_msg"] == "Invalid or missing API key"
    sim.config.keys = {"apifree": {"good"}}
    r = client.post("/v1/image/submit", json={"prompt": "x"},
                    headers={"Authorization": "Bearer good"})
    assert r.json()["code"] == 200
    rid = r.json()["resp_data"]["request_id"]
    r = client.get(f"/v1/image/{rid}/result", headers={"Authorization": "Bearer bad"})
    assert (r.status_code, r.json()["code"]) == (401, 401)
    assert sim.stats.submits["apifree"] == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": ""}, "prompt must be between 1 and 20000 characters"),
        ({"aspect_ratio": "5:1"}, "aspect_ratio must be one of: 1:1, 2:3"),
        ({"resolution": "1k"}, "resolution must be one of: 1K, 2K, 4K"),
        ({"model": "google/nano-banana"}, "unknown model 'google/nano-banana'"),
        ({"image_urls": ["https://e.com/x.png"] * 15},
         "image_urls accepts at most 14 images for model google/nano-banana-pro"),
        ({"image_urls": ["data:image/png;base64,AAAA"]}, "image_urls[0] is not a valid image"),
        ({"image_urls": "https://e.com/x.png"}, "image_urls must be a list of strings"),
    ],
)
@pytest.mark.parametrize("in_200", [True, False])
def test_apifree_validation(sim: Simulator, client: httpx.Client, fields: dict[str, Any],
                            message: str, in_200: bool) -> None:
    sim.config.apifree_errors_in_200 = in_200
    r = fr_submit(client, **fields)
    assert r.status_code == (200 if in_200 else 400)
    env = r.json()
    assert env["code"] == 400
    assert env["code_msg"].startswith(message)
    assert sim.stats.submits["apifree"] == 0


def test_apifree_accepts_reference_images(sim: Simulator, client: httpx.Client) -> None:
    uri, raw = data_uri("WEBP")
    r = fr_submit(client, image_urls=[uri] * 14)
    assert r.json()["code"] == 200
    (rec,) = sim.stats.jobs
    assert rec.n_refs == 14 and rec.ref_sha256s == [hashlib.sha256(raw).hexdigest()] * 14


def test_apifree_unknown_id(client: httpx.Client) -> None:
    r = client.get("/v1/image/abc123/result", headers=FR_KEY)
    assert (r.status_code, r.json()["code"]) == (404, 404)


# --------------------------------------------------------------------------- magic prompts


def test_fail_prompt_ends_failed(sim: Simulator, client: httpx.Client) -> None:
    sim.config.apifree_status_style = "long"
    af_id = af_submit(client, "a cat #fail").json()["jobId"]
    fr_id = fr_submit(client, "a cat #FAIL").json()["resp_data"]["request_id"]
    hold_processing(sim)
    assert af_job(client, af_id)["status"] == "PROCESSING"
    assert fr_result(client, fr_id)["status"] == "processing"
    finish(sim)
    job = af_job(client, af_id)
    assert (job["status"], job["error"], job["result"], job["creditCost"]) == (
        "FAILED", FAIL_REASON, None, 0)
    assert job["completedAt"] is not None
    data = fr_result(client, fr_id)
    assert (data["status"], data["error"], data["image_list"]) == ("failed", FAIL_REASON, [])
    sim.config.apifree_status_style = "short"
    assert fr_result(client, fr_id)["status"] == "error"
    assert client.get(f"/files/{af_id}/0.jpg").status_code == 404


def test_weird_prompt_reports_unknown_status_forever(sim: Simulator,
                                                     client: httpx.Client) -> None:
    finish(sim)
    af_id = af_submit(client, "#weird things").json()["jobId"]
    fr_id = fr_submit(client, "#weird things").json()["resp_data"]["request_id"]
    job = af_job(client, af_id)
    assert (job["status"], job["result"], job["completedAt"]) == ("WEIRD_STATE", None, None)
    assert fr_result(client, fr_id)["status"] == "WEIRD_STATE"


# --------------------------------------------------------------------------- statelessness


def test_another_instance_answers_for_a_job(client: httpx.Client, sim: Simulator) -> None:
    af_id = af_submit(client, "resume me", output_format="webp").json()["jobId"]
    fr_id = fr_submit(client, "resume me too").json()["resp_data"]["request_id"]
    url_before = f"{sim.base_url}/files/{af_id}/0.webp"
    sim.stop()
    with pytest.raises(httpx.TransportError):
        client.get(url_before)  # the old instance is really gone, pooled connections too

    with Simulator(SimConfig(queue_seconds=0, job_seconds=0)) as other, \
            httpx.Client(base_url=other.base_url) as c2:
        job = c2.get(f"/v2/jobs/{af_id}", headers=AF_KEY).json()
        assert job["status"] == "COMPLETED" and job["id"] == af_id
        (url,) = result_urls(job["result"])
        assert url.startswith(other.base_url)
        img = decode_image(c2.get(url).content)
        assert img.format == "WEBP" and img.size == (1024, 1024)
        data = fr_result(c2, fr_id)
        assert data["image_list"] == [f"{other.base_url}/files/{fr_id}/0.png"]
        assert other.stats.submits == {"apiframe": 0, "apifree": 0, "gemini": 0}


def test_restart_on_the_same_port(sim: Simulator) -> None:
    port = sim.port
    sim.stop()
    sim.start()
    assert sim.port == port and sim.base_url == f"http://127.0.0.1:{port}"
    assert httpx.get(f"{sim.base_url}/_sim/stats").status_code == 200


# --------------------------------------------------------------------------- scripted faults


def test_script_429_and_503_carry_retry_after(sim: Simulator, client: httpx.Client) -> None:
    sim.config.faults.retry_after = 2.0
    sim.script("apiframe.submit", ["429", "503", "ok"])
    r = af_submit(client)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "RATE_LIMITED"
    r = af_submit(client)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["message"] == "No available capacity"
    assert af_submit(client).status_code == 202
    assert sim.stats.submits["apiframe"] == 1  # refusals create nothing

    sim.config.faults.retry_after = 0.25
    sim.script("apifree.poll", ["429", "503", "500"])
    rid = fr_submit(client).json()["resp_data"]["request_id"]
    r = client.get(f"/v1/image/{rid}/result", headers=FR_KEY)
    assert (r.status_code, r.json()["code"], r.headers["retry-after"]) == (429, 429, "0.25")
    r = client.get(f"/v1/image/{rid}/result", headers=FR_KEY)
    assert (r.status_code, r.json()["code_msg"]) == (503, "No available capacity")
    r = client.get(f"/v1/image/{rid}/result", headers=FR_KEY)
    assert (r.status_code, r.json()["code"]) == (500, 500) and "retry-after" not in r.headers
    assert fr_result(client, rid)["status"] in ("processing", "queuing")
    assert {k: v for k, v in sim.stats.faults.items() if v} == {"429": 2, "503": 2, "500": 1}


def test_script_500(sim: Simulator, client: httpx.Client) -> None:
    sim.script("apiframe.poll", ["500"])
    job_id = af_submit(client).json()["jobId"]
    r = client.get(f"/v2/jobs/{job_id}", headers=AF_KEY)
    assert r.status_code == 500 and r.json()["error"]["code"] == "INTERNAL_ERROR"
    assert af_job(client, job_id)["status"] == "QUEUED"


def test_script_reset_creates_nothing(sim: Simulator, client: httpx.Client) -> None:
    sim.script("apiframe.submit", ["reset"])
    sim.script("apifree.submit", ["reset"])
    with pytest.raises(httpx.TransportError):
        af_submit(client, headers={**AF_KEY, "Idempotency-Key": "k1"})
    with pytest.raises(httpx.TransportError):
        fr_submit(client)
    assert sim.stats.submits == {"apiframe": 0, "apifree": 0, "gemini": 0} and sim.stats.jobs == []
    assert sim.stats.faults["reset"] == 2
    # The key was never seen: the retry is a fresh paid job, not a replay.
    assert af_submit(client, headers={**AF_KEY, "Idempotency-Key": "k1"}).status_code == 202
    assert (sim.stats.submits["apiframe"], sim.stats.replays) == (1, 0)


def test_script_reset_after_creates_an_unanswered_job(sim: Simulator,
                                                      client: httpx.Client) -> None:
    headers = {**AF_KEY, "Idempotency-Key": "k-after"}
    sim.script("apiframe.submit", ["reset_after"])
    with pytest.raises(httpx.TransportError):
        af_submit(client, headers=headers)
    (rec,) = sim.stats.jobs
    assert rec.answered is False and rec.idempotency_key == "k-after"
    # The retry with the same key gets the job that was already paid for.
    r = af_submit(client, headers=headers)
    assert r.status_code == 202 and r.json()["jobId"] == rec.remote_id
    assert (sim.stats.submits["apiframe"], sim.stats.replays) == (1, 1)

    sim.script("apifree.submit", ["reset_after"])
    with pytest.raises(httpx.TransportError):
        fr_submit(client)
    assert sim.stats.submits["apifree"] == 1 and sim.stats.jobs[-1].answered is False


def test_script_slow(sim: Simulator, client: httpx.Client) -> None:
    sim.config.faults.slow_seconds = 0.3
    sim.script("apiframe.submit", ["slow"])
    start = time.monotonic()
    r = af_submit(client)
    assert time.monotonic() - start >= 0.3
    assert r.status_code == 202 and sim.stats.jobs[0].answered is True
    assert sim.stats.faults["slow"] == 1


def test_script_truncate_download(sim: Simulator, client: httpx.Client) -> None:
    finish(sim)
    job_id = af_submit(client, output_format="png").json()["jobId"]
    url = result_urls(af_job(client, job_id)["result"])[0]
    sim.script("download", ["truncate"])
    with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection"):
        client.get(url)
    assert sim.stats.downloads == 0
    assert decode_image(client.get(url).content).format == "PNG"
    assert sim.stats.downloads == 1 and sim.stats.faults["truncate"] == 1


def test_script_cut_and_corrupt_download(sim: Simulator, client: httpx.Client) -> None:
    """Bodies sent whole (Content-Length matches) that are not the image: the first half
    of it, or all of it with one byte changed. Only a content check can tell."""
    finish(sim)
    job_id = af_submit(client, output_format="png").json()["jobId"]
    url = result_urls(af_job(client, job_id)["result"])[0]
    good = client.get(url).content
    sim.script("download", ["cut", "corrupt"])
    cut = client.get(url)
    assert cut.status_code == 200 and cut.content == good[: len(good) // 2]
    assert cut.headers["content-length"] == str(len(good) // 2)
    bad = client.get(url).content
    assert len(bad) == len(good) and sum(a != b for a, b in zip(bad, good, strict=True)) == 1
    assert sim.stats.downloads == 1
    assert sim.stats.faults["cut"] == 1 and sim.stats.faults["corrupt"] == 1
    sim.script("apiframe.poll", ["cut"])
    assert client.get(f"/v2/jobs/{job_id}", headers=AF_KEY).status_code == 500


def test_script_truncate_elsewhere_is_a_500(sim: Simulator, client: httpx.Client) -> None:
    sim.script("apiframe.poll", ["truncate"])
    job_id = af_submit(client).json()["jobId"]
    assert client.get(f"/v2/jobs/{job_id}", headers=AF_KEY).status_code == 500


def test_script_malformed(sim: Simulator, client: httpx.Client) -> None:
    sim.script("apiframe.submit", ["malformed"])
    sim.script("apiframe.poll", ["malformed"])
    sim.script("apifree.poll", ["malformed"])
    r = af_submit(client)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    (rec,) = sim.stats.jobs
    assert rec.answered is False  # the job exists and is paid for
    r = client.get(f"/v2/jobs/{rec.remote_id}", headers=AF_KEY)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    rid = fr_submit(client).json()["resp_data"]["request_id"]
    r = client.get(f"/v1/image/{rid}/result", headers=FR_KEY)
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    assert af_job(client, rec.remote_id)["status"] == "QUEUED"

    finish(sim)
    sim.script("download", ["malformed"])
    r = client.get(f"/files/{rec.remote_id}/0.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with pytest.raises(OSError):
        decode_image(r.content)
    assert sim.stats.faults["malformed"] == 4 and sim.stats.downloads == 0


def test_script_validates_its_arguments(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown route"):
        sim.script("apiframe.cancel", ["ok"])
    with pytest.raises(ValueError, match="unknown outcome"):
        sim.script("download", ["404"])


# --------------------------------------------------------------------------- seeded faults


def _fault_trace(seed: int) -> list[int]:
    cfg = SimConfig(faults=Faults(rate=0.5, seed=seed, kinds=("429", "500", "503")))
    with Simulator(cfg) as s, httpx.Client(base_url=s.base_url) as c:
        return [c.get("/v2/jobs/whatever", headers=AF_KEY).status_code for _ in range(24)]


def test_seeded_faults_are_reproducible() -> None:
    first, again, other = _fault_trace(7), _fault_trace(7), _fault_trace(8)
    assert first == again
    assert first != other
    assert set(first) <= {404, 429, 500, 503}
    assert 404 in first and len(set(first)) >= 3


def test_changing_the_faults_reseeds(sim: Simulator, client: httpx.Client) -> None:
    sim.config.faults = Faults(rate=1.0, seed=1, kinds=("503",))
    assert af_submit(client).status_code == 503
    assert client.get("/_sim/stats").status_code == 200  # never faulted
    sim.config.faults = Faults()
    assert af_submit(client).status_code == 202
    assert sim.stats.faults["503"] == 1


# --------------------------------------------------------------------------- stats, standalone


def test_stats_endpoint(sim: Simulator, client: httpx.Client) -> None:
    finish(sim)
    af_submit(client, headers={**AF_KEY, "Idempotency-Key": "s"})
    af_submit(client, headers={**AF_KEY, "Idempotency-Key": "s"})
    rid = fr_submit(client).json()["resp_data"]["request_id"]
    fr_result(client, rid)
    sim.script("apifree.poll", ["500"])
    client.get(f"/v1/image/{rid}/result", headers=FR_KEY)
    stats = client.get("/_sim/stats").json()
    assert stats == sim.stats.snapshot()
    assert stats["requests"] == 5  # /_sim/stats itself is not counted
    assert stats["submits"] == {"apiframe": 1, "apifree": 1, "gemini": 0}
    assert stats["replays"] == 1
    assert stats["polls"] == {"apiframe": 0, "apifree": 1, "gemini": 0}
    assert stats["faults"]["500"] == 1
    assert [j["provider"] for j in stats["jobs"]] == ["apiframe", "apifree"]
    assert set(stats["jobs"][0]) == {"provider", "remote_id", "idempotency_key", "prompt",
                                     "model", "params", "n_refs", "ref_sha256s", "answered",
                                     "turns", "signatures", "history_sha256s",
                                     "answer_signatures"}
    sim.stats.reset()
    assert sim.stats.snapshot()["requests"] == 0


def test_unknown_routes(client: httpx.Client) -> None:
    assert client.get("/v3/nothing").status_code == 404
    assert client.get("/v2/images/generate").status_code == 405


def test_capability_table_is_the_source(sim: Simulator, client: httpx.Client) -> None:
    """Every ratio and resolution the table lists is accepted, with the right image size."""
    for caps in (*APIFRAME.models, *APIFREE.models):
        for ratio in caps.aspect_ratios:
            for res in caps.resolutions or (None,):
                if caps.provider == "apiframe":
                    params = {"aspect_ratio": ratio, **({"resolution": res} if res else {})}
                    r = af_submit(client, model=caps.model, **params)
                    assert r.status_code == 202, r.text
                    token = JobToken.decode(r.json()["jobId"])
                else:
                    r = fr_submit(client, aspect_ratio=ratio, resolution=res)
                    assert r.json()["code"] == 200, r.text
                    token = JobToken.decode(r.json()["resp_data"]["request_id"])
                assert token is not None
                assert (token.model, token.aspect_ratio) == (caps.model, ratio)


def test_run_standalone_prints_serves_and_stops_on_sigterm() -> None:
    code = ("from nbdesk.sim import SimConfig, run_standalone; "
            "run_standalone(0, SimConfig(queue_seconds=0, job_seconds=0))")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        prefix = "nbdesk simulator listening on http://127.0.0.1:"
        assert line.startswith(prefix)
        assert line.endswith(" (Apiframe, APIFree and Gemini APIs; any key accepted)")
        base = line.removeprefix("nbdesk simulator listening on ").split(" ")[0]
        with httpx.Client(base_url=base) as c:
            rid = fr_submit(c).json()["resp_data"]["request_id"]
            assert fr_result(c, rid)["status"] in ("success", "completed")
            assert c.get("/_sim/stats").json()["submits"]["apifree"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
