"""The Gemini client through real httpx to the loopback simulator's generateContent."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os

import httpx
import pytest
from PIL import Image

from nbdesk.api.base import (
    AuthError,
    BadRequestError,
    GenerationRequest,
    InputError,
    Part,
    ProviderFailedError,
    RateLimitedError,
    Reference,
    Turn,
    UnansweredSubmitError,
)
from nbdesk.api.capabilities import ALL_RATIOS, GEMINI
from nbdesk.api.gemini import GeminiProvider, parse_answer
from nbdesk.api.http import RetryPolicy
from nbdesk.api.images import probe_bytes
from nbdesk.sim import Simulator
from nbdesk.sim.gemini import ANSWER_TEXT, REFUSAL_TEXT, signature_is_ours
from nbdesk.sim.images import image_size
from tests.helpers import FakeSleep

pytestmark = pytest.mark.anyio

FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image-preview"


def png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def gemini(sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy) -> GeminiProvider:
    return GeminiProvider(http, "test-key", sim.base_url, policy)


async def test_pro_answers_an_inline_image_with_signatures_and_local_refs(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    refs = [png(color=(n * 15, 0, 0)) for n in range(14)]  # Pro takes up to 14
    client = gemini(sim, http, policy)
    answer = await client.generate(GenerationRequest(
        model=PRO, prompt="a red bicycle", aspect_ratio="16:9", resolution="2K",
        google_search=True, with_text=True, references=[Reference(data_uri(r)) for r in refs],
    ))
    (record,) = sim.stats.jobs
    assert record.provider == "gemini" and record.model == PRO and record.turns == 1
    assert record.ref_sha256s == [hashlib.sha256(r).hexdigest() for r in refs]
    config = record.params["generationConfig"]
    assert config["responseModalities"] == ["TEXT", "IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert record.params["tools"] == [{"googleSearch": {}}]

    (image,) = answer.images
    info = probe_bytes(image.data)
    assert (info.format, (info.width, info.height)) == ("png", image_size("16:9", "2K"))
    assert image.mime == "image/png" and image.signature is not None
    assert answer.text == ANSWER_TEXT and answer.remote_id == record.remote_id
    assert answer.cost == GEMINI.model(PRO).price["2K"]
    # The model's turn, as it must go back: its text and its image, each with the
    # signature the simulator issued; the simulated "thought" part is left out.
    assert [(p.text, p.image_index) for p in answer.turn] == [(ANSWER_TEXT, None), (None, 0)]
    assert [p.signature for p in answer.turn] == record.answer_signatures
    assert all(p.signature and signature_is_ours(p.signature) for p in answer.turn)


async def test_flash_sends_no_image_size_and_images_only_by_default(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    answer = await gemini(sim, http, policy).generate(GenerationRequest(model=FLASH, prompt="x"))
    (record,) = sim.stats.jobs
    assert record.params == {"generationConfig": {"responseModalities": ["IMAGE"]}}
    assert answer.text is None and [p.image_index for p in answer.turn] == [0]
    assert answer.cost == 0.039
    assert probe_bytes(answer.images[0].data).width == 1024


@pytest.mark.parametrize("ratio", ALL_RATIOS)
async def test_every_ratio_of_the_table_is_accepted(
    ratio: str, sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    answer = await gemini(sim, http, policy).generate(
        GenerationRequest(model=PRO, prompt="x", aspect_ratio=ratio, resolution="1K"))
    info = probe_bytes(answer.images[0].data)
    assert (info.width, info.height) == image_size(ratio, "1K")


async def test_text_without_an_image_fails_with_that_text(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, fake_sleep: FakeSleep,
) -> None:
    client = gemini(sim, http, policy)
    with pytest.raises(ProviderFailedError) as caught:
        await client.generate(GenerationRequest(model=PRO, prompt="something #fail"))
    assert caught.value.message == REFUSAL_TEXT
    with pytest.raises(ProviderFailedError, match=r"blocked the prompt \(OTHER\)"):
        await client.generate(GenerationRequest(model=FLASH, prompt="x #blocked"))
    assert fake_sleep.calls == [] and sim.stats.submits["gemini"] == 2  # not repeated


def test_answers_without_an_image_are_explained() -> None:
    model = GEMINI.model(FLASH)
    empty = {"candidates": [{"finishReason": "IMAGE_SAFETY", "content": {"parts": []}}]}
    with pytest.raises(ProviderFailedError, match="safety filters"):
        parse_answer(json.dumps(empty).encode(), model, None)
    odd = {"candidates": [{"finishReason": "SOMETHING_NEW"}]}
    with pytest.raises(ProviderFailedError, match="SOMETHING_NEW"):
        parse_answer(json.dumps(odd).encode(), model, None)


async def test_429_and_503_are_retried_with_backoff_and_billed_once(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, fake_sleep: FakeSleep,
) -> None:
    sim.config.faults.retry_after = 7.0
    sim.script("gemini.generate", ["429", "503", "503"])
    answer = await gemini(sim, http, policy).generate(GenerationRequest(model=FLASH, prompt="x"))
    assert answer.images
    assert fake_sleep.calls[0] == 7.0  # RetryInfo.retryDelay "7s" of the 429
    assert 0.75 <= fake_sleep.calls[1] <= 1.0  # no wait given: backoff 0.5 * 2**1, jitter
    assert 1.5 <= fake_sleep.calls[2] <= 2.0
    assert sim.stats.submits["gemini"] == 1
    assert (sim.stats.faults["429"], sim.stats.faults["503"]) == (1, 2)


async def test_endless_429_gives_up_as_a_transient_refusal(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy, fake_sleep: FakeSleep,
) -> None:
    sim.script("gemini.generate", ["429"] * policy.max_attempts)
    with pytest.raises(RateLimitedError) as caught:
        await gemini(sim, http, policy).generate(GenerationRequest(model=FLASH, prompt="x"))
    assert caught.value.sent is False and "exhausted" in caught.value.message
    assert len(fake_sleep.calls) == policy.max_attempts - 1
    assert sim.stats.submits["gemini"] == 0


@pytest.mark.parametrize("outcome", ["reset_after", "reset", "500", "malformed"])
async def test_a_lost_or_unreadable_answer_is_never_repeated(
    outcome: str, sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
    fake_sleep: FakeSleep,
) -> None:
    sim.script("gemini.generate", [outcome])
    with pytest.raises(UnansweredSubmitError, match="not repeated automatically"):
        await gemini(sim, http, policy).generate(GenerationRequest(model=FLASH, prompt="x"))
    assert sim.stats.requests == 1 and fake_sleep.calls == []


async def test_wrong_key_is_an_auth_error_though_google_says_400(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    sim.config.keys = {"gemini": {"good"}}
    with pytest.raises(AuthError, match="API key not valid"):
        await gemini(sim, http, policy).generate(GenerationRequest(model=FLASH, prompt="x"))
    with pytest.raises(AuthError, match="403"):
        await GeminiProvider(http, "", sim.base_url, policy).generate(
            GenerationRequest(model=FLASH, prompt="x"))
    assert sim.stats.submits["gemini"] == 0


async def test_google_refusals_are_shown_verbatim(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    bad = Reference("data:image/png;base64," + base64.b64encode(b"not a png").decode())
    with pytest.raises(BadRequestError, match="Unable to process input image"):
        await gemini(sim, http, policy).generate(
            GenerationRequest(model=FLASH, prompt="x", references=[bad]))
    assert sim.stats.submits["gemini"] == 0


async def test_bad_input_is_refused_before_sending(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    client = gemini(sim, http, policy)
    one = Reference(data_uri(png()))
    cases = [
        (GenerationRequest(model=FLASH, prompt="x", resolution="2K"), "no resolution"),
        (GenerationRequest(model=PRO, prompt="x", resolution="4k"), "1K, 2K, 4K"),
        (GenerationRequest(model=FLASH, prompt="x", google_search=True), "search"),
        (GenerationRequest(model=PRO, prompt="x", image_search=True), "image search"),
        (GenerationRequest(model=PRO, prompt="x", output_format="png"), "format"),
        (GenerationRequest(model=FLASH, prompt="x", references=[one] * 4), "at most 3"),
        (GenerationRequest(model=PRO, prompt="x", references=[one] * 15), "at most 14"),
        (GenerationRequest(model=PRO, prompt="x",
                           references=[Reference("https://e.com/a.png")]), "local files"),
        (GenerationRequest(model="gemini-9", prompt="x"), "no model"),
    ]
    for request, message in cases:
        with pytest.raises(InputError) as caught:
            await client.generate(request)
        assert message in caught.value.message, caught.value.message
    assert sim.stats.requests == 0


async def test_a_request_over_the_size_limit_drops_old_turns_or_is_refused(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    noise = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    big = Reference(data_uri(buf.getvalue()))  # ~1.5 MB raw
    history = [Turn("user", (Part(text="first"),)),
               Turn("model", (Part(image=big, signature="s1"),)),
               Turn("user", (Part(text="second"),)),
               Turn("model", (Part(image=Reference(data_uri(png())), signature="s2"),))]
    request = GenerationRequest(model=PRO, prompt="third", history=history)
    whole = len(gemini(sim, http, policy).encode(request))

    class Smaller(GeminiProvider):
        caps = dataclasses.replace(GEMINI, max_request_bytes=whole - 1)

    client = Smaller(http, "k", sim.base_url, policy)
    body = json.loads(client.encode(request))
    assert [c["parts"][0].get("text") for c in body["contents"]] == ["second", None, "third"]
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == "s2"
    with pytest.raises(InputError, match="at most"):
        client.encode(GenerationRequest(model=PRO, prompt="x", references=[big] * 14))
    assert sim.stats.requests == 0


async def test_history_goes_back_with_its_signatures(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    client = gemini(sim, http, policy)
    first = await client.generate(GenerationRequest(model=PRO, prompt="a cat", with_text=True))
    image = Reference(data_uri(first.images[0].data))
    model_turn = tuple(
        Part(image=image, signature=p.signature) if p.image_index is not None
        else Part(text=p.text, signature=p.signature)
        for p in first.turn
    )
    history = [Turn("user", (Part(text="a cat"),)), Turn("model", model_turn)]
    await client.generate(GenerationRequest(model=PRO, prompt="make it blue", history=history))
    sent = sim.stats.jobs[-1]
    assert sent.turns == 3 and sent.prompt == "make it blue" and sent.n_refs == 0
    assert sent.signatures == sim.stats.jobs[0].answer_signatures
    assert sent.history_sha256s == [hashlib.sha256(first.images[0].data).hexdigest()]


async def test_big_answers_pass_the_answer_cap(
    sim: Simulator, http: httpx.AsyncClient, policy: RetryPolicy,
) -> None:
    sim.config.gemini_image_padding = 12 * 2**20  # like a photographic 4K PNG
    answer = await gemini(sim, http, policy).generate(
        GenerationRequest(model=PRO, prompt="x", aspect_ratio="21:9", resolution="4K"))
    data = answer.images[0].data
    assert len(data) > 12 * 2**20  # far over the 2 MiB cap of every other API answer
    info = probe_bytes(data)
    assert (info.width, info.height) == image_size("21:9", "4K")
    assert answer.cost == 0.24

