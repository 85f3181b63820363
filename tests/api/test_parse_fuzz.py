"""Random and adversarial answers thrown at every provider's parse functions.

The rule (nbdesk.api.answers.reading): reading an answer either gives a valid result or
raises a typed ``ApiError``, never another exception (an OverflowError from a 400-digit
number once failed a paid job as "internal", and its Retry paid again). Profiles are in
tests/conftest.py: "ci" by default (fixed seed, bounded), NBDESK_HYPOTHESIS=long for more.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from nbdesk.api import apifree, gemini
from nbdesk.api.answers import MAX_REMOTE_ID
from nbdesk.api.apiframe import ApiframeProvider
from nbdesk.api.apifree import ApifreeProvider
from nbdesk.api.base import Answer, ApiError, PollResult, ProtocolError
from nbdesk.api.capabilities import GEMINI
from nbdesk.api.http import parse_json, raise_for_status

MODEL = GEMINI.models[-1]

# ------------------------------------------------------------------------ strategies

KEYS = [
    # Apiframe
    "jobId", "id", "status", "progress", "creditCost", "cost", "error", "message", "result",
    "images", "image_urls", "urls", "url", "image_url", "output",
    # APIFree
    "code", "code_msg", "trace_id", "resp_data", "request_id", "usage", "image_list",
    # Gemini
    "candidates", "content", "parts", "inlineData", "inline_data", "mimeType", "data", "text",
    "thought", "thoughtSignature", "promptFeedback", "blockReason", "blockReasonMessage",
    "finishReason", "finishMessage", "responseId", "details", "retryDelay", "reason",
    "detail", "msg",
]
WORDS = [
    "COMPLETED", "FAILED", "PROCESSING", "QUEUED", "success", "error", "queuing",
    "processing", "200", "401", "403", "429", "500", "503", "1" * 400, "-0", "NaN",
    "https://img.example.com/a.png", "13s", "1" * 400 + "s", "API_KEY_INVALID", "IMAGE_SAFETY",
    "", " ", "\x00", "job-\n1",
]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


def _tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (1, 2, 3)).save(out, "TIFF", compression="tiff_adobe_deflate")
    return out.getvalue()


PNG_B64 = base64.b64encode(_png()).decode()
TIFF_B64 = base64.b64encode(_tiff()).decode()

scalars = (
    st.none() | st.booleans() | st.integers()
    | st.integers(min_value=10**399, max_value=10**401)
    | st.integers(min_value=-(10**401), max_value=-(10**399))
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(WORDS) | st.sampled_from([PNG_B64, TIFF_B64])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5),
    max_leaves=25,
)


def _inline(b64: str) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": b64}}


#: Well-formed answers; the adversarial strategy replaces one value in them (at any depth)
#: with anything, so every known key gets every wrong type.
TEMPLATES: list[Any] = [
    {"jobId": "job1"},
    {"status": "PROCESSING", "progress": 40, "creditCost": 2},
    {"status": "COMPLETED", "progress": 100, "cost": 0.1,
     "result": {"images": ["https://img.example.com/a.png"]}},
    {"status": "FAILED", "error": {"message": "nope"}},
    {"code": 200, "code_msg": "ok", "resp_data": {"request_id": "r1"}},
    {"code": 200, "resp_data": {"status": "success", "usage": {"cost": 0.04},
                                "image_list": [{"url": "https://img.example.com/a.png"}]}},
    {"code": 401, "code_msg": "bad key", "resp_data": None},
    {"candidates": [{"content": {"parts": [{"text": "here"}, _inline(PNG_B64)]},
                     "finishReason": "STOP"}], "responseId": "resp-1"},
    {"candidates": [{"content": {"parts": [_inline(PNG_B64)] * 5}}]},
    {"promptFeedback": {"blockReason": "SAFETY", "blockReasonMessage": "no"}},
    {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED",
               "details": [{"retryDelay": "13s"}, {"reason": "API_KEY_INVALID"}]}},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found += _paths(item, (*prefix, n))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A real answer's shape with one value anywhere in it replaced by anything."""
    template = copy.deepcopy(draw(st.sampled_from(TEMPLATES)))
    path = draw(st.sampled_from(_paths(template)))
    replacement = draw(json_values)
    if not path:
        return replacement
    target = template
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = replacement
    return template


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


#: Deep enough for RecursionError in any recursive reader, built without recursion.
DEEP = 50_000
answers = json_values | mutated()


def adversarial() -> list[Any]:
    nested = deep(DEEP)
    nested_dict: Any = "https://img.example.com/a.png"
    for _ in range(DEEP):
        nested_dict = {"images": nested_dict}
    return [
        {"status": "PROCESSING", "progress": 10**400, "creditCost": 10**400},
        {"status": "PROCESSING", "progress": math.inf, "cost": math.nan},
        {"status": "COMPLETED", "result": nested},
        {"status": "COMPLETED", "result": nested_dict},
        {"status": nested, "error": nested},
        {"code": math.inf, "resp_data": {}},
        {"code": 10**400, "code_msg": nested},
        {"code": 200, "resp_data": {"status": "success", "image_list": nested}},
        {"error": {"message": nested_dict, "details": nested}},
        {"jobId": "j" * (MAX_REMOTE_ID + 1)},
        nested,
        nested_dict,
    ]


def response(status: int, body: bytes) -> httpx.Response:
    return httpx.Response(
        status, content=body, headers={"content-type": "application/json"},
        request=httpx.Request("GET", "http://127.0.0.1/x"))


def body_of(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (RecursionError, ValueError):
        return b"[" * DEEP + b"]" * DEEP  # as deep, written by hand


STATUSES = st.sampled_from([200, 200, 200, 400, 401, 403, 404, 429, 500, 503])

# ------------------------------------------------------------------------ outcomes


def valid_poll(result: PollResult) -> None:
    assert result.progress is None or 0.0 <= result.progress <= 100.0
    assert result.cost is None or (math.isfinite(result.cost) and result.cost >= 0)
    assert all(isinstance(u, str) for u in result.urls)
    assert result.error is None or (isinstance(result.error, str) and len(result.error) <= 1000)
    assert isinstance(result.raw_status, str) and len(result.raw_status) <= 64


def valid_id(job_id: str | None) -> None:
    assert job_id is None or (isinstance(job_id, str) and 0 < len(job_id) <= MAX_REMOTE_ID)


def valid_answer(answer: Answer) -> None:
    assert 0 < len(answer.images) <= MODEL.max_images
    assert all(i.mime in ("image/jpeg", "image/png", "image/webp") for i in answer.images)
    valid_id(answer.remote_id)


def outcome(call: Callable[[], Any], check: Callable[[Any], None]) -> None:
    """``call`` gives a valid result or raises an ApiError; anything else fails the test."""
    try:
        result = call()
    except ApiError as exc:
        assert type(exc) is not ApiError and exc.message  # a typed subclass, with a message
        return
    check(result)


def apiframe_poll(status: int, body: bytes) -> PollResult:
    r = response(status, body)
    raise_for_status(r, "status")
    return ApiframeProvider.parse_job(parse_json(r, "status"))


def apiframe_submit(status: int, body: bytes) -> str:
    r = response(status, body)
    raise_for_status(r, "submit")
    return ApiframeProvider.parse_submit(parse_json(r, "submit"))


def apifree_poll(status: int, body: bytes) -> PollResult:
    return ApifreeProvider.parse_result(apifree.unwrap(response(status, body), "status"))


def apifree_submit(status: int, body: bytes) -> str | None:
    return ApifreeProvider.parse_submit(apifree.unwrap(response(status, body), "submit"))


def gemini_status(status: int, body: bytes) -> None:
    gemini.check_status(response(status, body), "generate")


def ignore(_: Any) -> None:
    pass


def every_reader(value: Any, status: int) -> None:
    body = body_of(value)
    outcome(lambda: ApiframeProvider.parse_job(value), valid_poll)
    outcome(lambda: ApiframeProvider.parse_submit(value), valid_id)
    outcome(lambda: apiframe_poll(status, body), valid_poll)
    outcome(lambda: apiframe_submit(status, body), valid_id)
    outcome(lambda: apifree.envelope(value, "status"), ignore)
    outcome(lambda: ApifreeProvider.parse_result(value), valid_poll)
    outcome(lambda: ApifreeProvider.parse_submit(value), valid_id)
    outcome(lambda: apifree_poll(status, body), valid_poll)
    outcome(lambda: apifree_submit(status, body), valid_id)
    outcome(lambda: gemini.parse_answer(body, MODEL, "1K"), valid_answer)
    outcome(lambda: gemini_status(max(status, 400), body), ignore)


# ------------------------------------------------------------------------ the tests


@given(answers, STATUSES)
def test_random_answers_give_a_result_or_a_typed_error(value: Any, status: int) -> None:
    every_reader(value, status)


@given(mutated())
def test_known_shapes_with_a_wrong_value_anywhere(value: Any) -> None:
    every_reader(value, 200)


@pytest.mark.parametrize("n", range(len(adversarial())))
@pytest.mark.parametrize("status", [200, 429, 500])
def test_adversarial_answers(n: int, status: int) -> None:
    every_reader(adversarial()[n], status)


@pytest.mark.parametrize("body", [
    b"[" * DEEP + b"]" * DEEP,  # RecursionError in json
    b'{"status": "PROCESSING", "progress": ' + b"9" * 5000 + b"}",  # ValueError in int()
    b'{"status": "COMPLETED", "result": "\xff\xfe"}',  # not UTF-8
    b"",
    b"<html>oops</html>",
])
def test_unreadable_bodies_are_protocol_errors(body: bytes) -> None:
    for read in (apiframe_poll, apiframe_submit, apifree_poll, apifree_submit):
        with pytest.raises(ProtocolError):
            read(200, body)
    with pytest.raises(ProtocolError):
        gemini.parse_answer(body, MODEL, "1K")


def test_the_400_digit_progress_of_the_review() -> None:
    """The finding: ``float(10**400)`` raised OverflowError; now the value is dropped."""
    result = apiframe_poll(200, json.dumps(
        {"status": "PROCESSING", "progress": 10**400, "creditCost": 10**400}).encode())
    assert result.progress is None and result.cost is None and result.raw_status == "PROCESSING"
