"""The simulator's Gemini generateContent endpoint, over real HTTP with httpx."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from nbdesk.sim import SimConfig, Simulator
from nbdesk.sim.gemini import REFUSAL_TEXT, signature_is_ours
from nbdesk.sim.images import image_size

KEY = {"x-goog-api-key": "sim-key"}
PRO = "/v1beta/models/gemini-3-pro-image-preview:generateContent"
FLASH = "/v1beta/models/gemini-2.5-flash-image:generateContent"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig()) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10) as c:
        yield c


def body(prompt: str = "a lighthouse", *, images: tuple[bytes, ...] = (),
         **config: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": prompt}]
    parts += [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(i).decode()}}
              for i in images]
    return {"contents": [{"role": "user", "parts": parts}],
            "generationConfig": {"responseModalities": ["IMAGE"], **config}}


def png(color: tuple[int, int, int] = (1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def parts_of(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    parts: list[dict[str, Any]] = r.json()["candidates"][0]["content"]["parts"]
    return parts


def test_pro_answers_a_signed_inline_png_of_the_asked_size(
    sim: Simulator, client: httpx.Client
) -> None:
    ref = png()
    r = client.post(PRO, headers=KEY, json=body(
        "x", images=(ref,), imageConfig={"aspectRatio": "9:16", "imageSize": "2K"}))
    parts = parts_of(r)
    thought, picture = parts
    assert thought["thought"] is True and "thoughtSignature" not in thought
    assert signature_is_ours(picture["thoughtSignature"])
    data = base64.b64decode(picture["inlineData"]["data"])
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.size) == ("PNG", image_size("9:16", "2K"))
    assert r.json()["responseId"] and r.json()["modelVersion"] == "gemini-3-pro-image-preview"
    (rec,) = sim.stats.jobs
    assert rec.ref_sha256s == [hashlib.sha256(ref).hexdigest()] and rec.answered
    assert rec.answer_signatures == [picture["thoughtSignature"]]
    assert sim.stats.submits["gemini"] == 1


def test_flash_is_unsigned_and_text_comes_when_asked(client: httpx.Client) -> None:
    parts = parts_of(client.post(FLASH, headers=KEY,
                                 json=body(responseModalities=["TEXT", "IMAGE"])))
    assert [sorted(p) for p in parts] == [["text"], ["inlineData"]]


def test_text_only_refusal_and_blocked_prompt(client: httpx.Client) -> None:
    assert parts_of(client.post(FLASH, headers=KEY, json=body("no #fail"))) == [
        {"text": REFUSAL_TEXT}]
    r = client.post(FLASH, headers=KEY, json=body("#blocked"))
    assert r.status_code == 200 and "candidates" not in r.json()
    assert r.json()["promptFeedback"] == {"blockReason": "OTHER"}


def test_keys_as_google_checks_them(sim: Simulator, client: httpx.Client) -> None:
    sim.config.keys = {"gemini": {"good"}}
    r = client.post(FLASH, headers=KEY, json=body())
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    r = client.post(FLASH, json=body())
    assert (r.status_code, r.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert client.post(FLASH, headers={"x-goog-api-key": "good"}, json=body()).status_code == 200


@pytest.mark.parametrize(
    ("path", "payload", "message"),
    [
        ("/v1beta/models/gemini-9:generateContent", body(), "not found"),
        (FLASH, {"contents": []}, "contents is not specified"),
        (FLASH, body(imageConfig={"imageSize": "2K"}), "not supported"),
        (PRO, body(imageConfig={"imageSize": "2k"}), "uppercase K"),
        (PRO, body(imageConfig={"aspectRatio": "7:3"}), "aspectRatio"),
        (FLASH, body(images=(png(),) * 4), "at most 3"),
        (FLASH, {**body(), "tools": [{"googleSearch": {}}]}, "not supported"),
        (FLASH, body(responseModalities=["TEXT"]), "must include IMAGE"),
        (FLASH, {"contents": [{"role": "user", "parts": [
            {"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": "bm9wZQ=="}}]}]},
         "Unable to process input image"),
        (FLASH, {"contents": [{"role": "model", "parts": [{"text": "x"}]}]}, "user role"),
    ],
)
def test_validation(sim: Simulator, client: httpx.Client, path: str, payload: Any,
                    message: str) -> None:
    r = client.post(path, headers=KEY, json=payload)
    assert r.status_code in (400, 404)
    assert message in r.json()["error"]["message"]
    assert sim.stats.submits["gemini"] == 0


def test_history_signatures_are_recorded(sim: Simulator, client: httpx.Client) -> None:
    first = parts_of(client.post(PRO, headers=KEY, json=body("a cat")))[-1]
    again = {"contents": [
        {"role": "user", "parts": [{"text": "a cat"}]},
        {"role": "model", "parts": [first]},
        {"role": "user", "parts": [{"text": "make it blue"}]},
    ]}
    parts_of(client.post(PRO, headers=KEY, json=again))
    rec = sim.stats.jobs[-1]
    assert (rec.turns, rec.prompt) == (3, "make it blue")
    assert rec.signatures == [first["thoughtSignature"]]
    raw = base64.b64decode(first["inlineData"]["data"])
    assert rec.history_sha256s == [hashlib.sha256(raw).hexdigest()] and rec.n_refs == 0
    user_signed = {"contents": [{"role": "user", "parts": [
        {"text": "x", "thoughtSignature": "forged"}]}]}
    assert client.post(PRO, headers=KEY, json=user_signed).status_code == 400


def test_faults_speak_googles_language(sim: Simulator, client: httpx.Client) -> None:
    sim.config.faults.retry_after = 3.0
    sim.script("gemini.generate", ["429", "503", "500"])
    r = client.post(FLASH, headers=KEY, json=body())
    error = r.json()["error"]
    assert (r.status_code, error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert "retry-after" not in r.headers and error["details"][0]["retryDelay"] == "3s"
    r = client.post(FLASH, headers=KEY, json=body())
    assert (r.status_code, r.json()["error"]["status"]) == (503, "UNAVAILABLE")
    assert "overloaded" in r.json()["error"]["message"]
    r = client.post(FLASH, headers=KEY, json=body())
    assert (r.status_code, r.json()["error"]["status"]) == (500, "INTERNAL")
    assert sim.stats.submits["gemini"] == 0  # refusals are not billed


def test_reset_after_bills_an_unanswered_call(sim: Simulator, client: httpx.Client) -> None:
    sim.script("gemini.generate", ["reset_after"])
    with pytest.raises(httpx.TransportError):
        client.post(FLASH, headers=KEY, json=body())
    (rec,) = sim.stats.jobs
    assert rec.answered is False and sim.stats.submits["gemini"] == 1


def test_padding_makes_big_answers_that_still_decode(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.config.gemini_image_padding = 3 * 2**20
    (picture,) = parts_of(client.post(FLASH, headers=KEY, json=body()))
    data = base64.b64decode(picture["inlineData"]["data"])
    assert len(data) > 3 * 2**20
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size == (1024, 1024)
