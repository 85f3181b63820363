"""Hostile answers through the real httpx code on loopback (tests/hostile.py): numbers that
break float(), results in formats no model makes, pictures too large, too many images,
references carrying a GPS position."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from nbdesk.api.apiframe import ApiframeProvider
from nbdesk.api.apifree import ApifreeProvider
from nbdesk.api.base import (
    Answer,
    BadRequestError,
    GenerationRequest,
    RemoteState,
    UnansweredSubmitError,
)
from nbdesk.api.capabilities import GEMINI
from nbdesk.api.gemini import GeminiProvider
from nbdesk.api.http import RetryPolicy
from nbdesk.api.images import ImageCheckError, ImageInfo
from nbdesk.api.refs import fetch_reference
from nbdesk.core.engine import fetch_image
from tests.api.test_images import SECRETS, bilevel_png, deflate_tiff, encode, with_metadata
from tests.hostile import Handler, Hostile, Responder, json_answer

pytestmark = pytest.mark.anyio


def image_answer(data: bytes, ctype: str = "image/png") -> Responder:
    def respond(h: Handler) -> None:
        h.send_body(data, content_type=ctype)

    return respond


def small(fmt: str, **params: object) -> bytes:
    return encode(Image.effect_noise((48, 32), 40).convert("RGB"), fmt, **params)


# ---------------------------------------------------------------------- poll answers


async def test_apiframe_poll_with_a_401_digit_progress_is_read(
    hostile: Hostile, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    """The review's finding: OverflowError in float(progress) failed the job as internal."""
    body = ('{"status": "PROCESSING", "progress": ' + "9" * 401
            + ', "creditCost": 1e400}').encode()
    hostile.route("GET", "/v2/jobs/", json_answer(body))
    result = await ApiframeProvider(http, "k", hostile.base_url, policy).poll("job1")
    assert result.state is RemoteState.RUNNING
    assert result.progress is None and result.cost is None


async def test_apifree_envelope_with_an_infinite_code_is_a_typed_error(
    hostile: Hostile, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    hostile.route("GET", "/v1/image/", json_answer(b'{"code": 1e400, "resp_data": {}}'))
    with pytest.raises(BadRequestError, match="refused the request"):
        await ApifreeProvider(http, "k", hostile.base_url, policy).poll("r1")


# ---------------------------------------------------------------------- result downloads


BAD_RESULTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "tiff": (lambda: deflate_tiff(), "a TIFF image, where only JPEG, PNG or WebP"),
    "gif": (lambda: small("GIF"), "a GIF image, where only"),
    "bmp": (lambda: small("BMP"), "a BMP image, where only"),
    "huge-png": (lambda: bilevel_png(20_000, 20_000), "too large"),
}


@pytest.mark.parametrize("name", sorted(BAD_RESULTS))
async def test_results_that_no_model_makes_are_refused_unstored(
    name: str, hostile: Hostile, http: httpx.AsyncClient, tmp_path: Path,
) -> None:
    make, message = BAD_RESULTS[name]
    hostile.route("GET", "/img/", image_answer(make()))
    tmp = tmp_path / "result.part"
    with pytest.raises(ImageCheckError, match=message):
        await fetch_image(http, hostile.url("/img/r"), tmp, 100_000_000,
                              origin=hostile.base_url)


@pytest.mark.parametrize(("fmt", "expected"), [
    ("JPEG", ("jpeg", "jpg", "image/jpeg")), ("PNG", ("png", "png", "image/png")),
    ("WEBP", ("webp", "webp", "image/webp")),
])
async def test_results_in_the_models_formats_are_taken(
    fmt: str, expected: tuple[str, str, str], hostile: Hostile, http: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    hostile.route("GET", "/img/", image_answer(small(fmt)))
    info, got = await fetch_image(http, hostile.url("/img/r"), tmp_path / "r.part", 10**8,
                                  origin=hostile.base_url)
    assert info == ImageInfo(*expected, width=48, height=32)
    assert got.path.stat().st_size == got.size


# ---------------------------------------------------------------------- Gemini inline


def gemini_answer(*images: bytes) -> bytes:
    parts = [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(i).decode()}}
             for i in images]
    return json.dumps({"candidates": [{"content": {"parts": parts}}]}).encode()


async def generate(hostile: Hostile, http: httpx.AsyncClient, policy: RetryPolicy,
                   body: bytes) -> Answer:
    hostile.route("POST", "/v1beta/models/", json_answer(body))
    client = GeminiProvider(http, "k", hostile.base_url, policy)
    return await client.generate(GenerationRequest(model=GEMINI.models[0].model, prompt="x"))


@pytest.mark.parametrize("name", sorted(BAD_RESULTS))
async def test_gemini_inline_images_no_model_makes_are_refused(
    name: str, hostile: Hostile, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    make, message = BAD_RESULTS[name]
    with pytest.raises(UnansweredSubmitError, match=message):
        await generate(hostile, http, policy, gemini_answer(make()))
    assert hostile.count("POST") == 1  # not repeated


async def test_gemini_answer_with_more_images_than_the_model_makes(
    hostile: Hostile, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    cap = GEMINI.models[0].max_images
    png = small("PNG")
    answer = await generate(hostile, http, policy, gemini_answer(*[png] * cap))
    assert len(answer.images) == cap
    with pytest.raises(UnansweredSubmitError, match=f"more than {cap} images"):
        await generate(hostile, http, policy, gemini_answer(*[png] * (cap + 1)))


async def test_gemini_inline_image_mime_is_what_the_bytes_are(
    hostile: Hostile, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    answer = await generate(hostile, http, policy, gemini_answer(small("JPEG")))
    assert answer.images[0].mime == "image/jpeg"


# ---------------------------------------------------------------------- references


async def test_a_fetched_reference_is_kept_without_its_gps(
    hostile: Hostile, http: httpx.AsyncClient,
) -> None:
    photo = with_metadata("JPEG")
    hostile.route("GET", "/photo.jpg", image_answer(photo, "image/jpeg"))
    data, info = await fetch_reference(http, hostile.url("/photo.jpg"))
    assert info.format == "jpeg" and len(data) < len(photo)
    for secret in SECRETS:
        assert secret not in data
    with Image.open(io.BytesIO(data)) as im:
        assert len(im.getexif()) == 0
    kept, _ = await fetch_reference(http, hostile.url("/photo.jpg"), keep_metadata=True)
    assert kept == photo
