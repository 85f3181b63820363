"""The Gemini API: ``POST /v1beta/models/{model}:generateContent``, one synchronous call.

The image comes back inside the answer (base64 ``inlineData``): there is no job to poll,
and no idempotency key. The call is retried only when the failure proves it was not taken
on (connection refused, 429 RESOURCE_EXHAUSTED, 503 overloaded); any other lost answer
raises UnansweredSubmitError and the engine marks the job interrupted.

An answer with text and no image is a ProviderFailedError whose message is that text.
Answers can be tens of MB (a 4K PNG, base64): the request body is encoded and the answer
decoded in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nbdesk.api.answers import error_body, reading, remote_id_value, status_value, text_value
from nbdesk.api.base import (
    Answer,
    AnswerImage,
    AuthError,
    GenerationRequest,
    InputError,
    Part,
    ProtocolError,
    ProviderFailedError,
    RateLimitedError,
    Turn,
    sent_once,
)
from nbdesk.api.capabilities import GEMINI, ModelCaps
from nbdesk.api.http import error_message, raise_for_status, send, with_retries
from nbdesk.api.images import ImageCheckError, identify_result
from nbdesk.api.provider import HttpProvider
from nbdesk.api.validate import validate_request

if TYPE_CHECKING:  # imported with the client (nbdesk.api.http.make_client)
    import httpx

_DATA_URI = re.compile(r"^data:([A-Za-z0-9.+/-]+);base64,", re.ASCII)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_NO_IMAGE_REASONS = {
    "IMAGE_SAFETY": "the image was blocked by the safety filters",
    "SAFETY": "the answer was blocked by the safety filters",
    "PROHIBITED_CONTENT": "the request was refused as prohibited content",
    "IMAGE_PROHIBITED_CONTENT": "the image was refused as prohibited content",
    "RECITATION": "the answer was blocked for recitation",
    "NO_IMAGE": "the model made no image",
    "MAX_TOKENS": "the answer hit the output limit before an image",
}


def _inline(ref_url: str, what: str) -> dict[str, str]:
    """A data: URI as an ``inlineData`` object (its base64 is sent as it is)."""
    match = _DATA_URI.match(ref_url)
    if match is None:
        raise InputError(f"{what}: {GEMINI.label} takes images as local files only")
    return {"mimeType": match.group(1), "data": ref_url[match.end():]}


def _wire_part(part: Part, what: str) -> dict[str, Any]:
    out: dict[str, Any]
    if part.image is not None:
        out = {"inlineData": _inline(part.image.url, what)}
    else:
        out = {"text": part.text or ""}
    if part.signature:
        out["thoughtSignature"] = part.signature
    return out


def _wire_turn(turn: Turn, n: int) -> dict[str, Any]:
    return {
        "role": turn.role,
        "parts": [_wire_part(p, f"earlier turn {n}") for p in turn.parts],
    }


def retry_delay(payload: Any) -> float | None:
    """``RetryInfo.retryDelay`` ("13s") from a Google error body, in seconds."""
    error = payload.get("error") if isinstance(payload, Mapping) else None
    details = error.get("details") if isinstance(error, Mapping) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, Mapping) and "retryDelay" in detail:
            delay = detail["retryDelay"]
            match = _DURATION.match(delay) if isinstance(delay, str) else None
            if match:
                seconds = float(match.group(1))
                return seconds if math.isfinite(seconds) else None
    return None


def _reasons(payload: Any) -> set[str]:
    error = payload.get("error") if isinstance(payload, Mapping) else None
    details = error.get("details") if isinstance(error, Mapping) else None
    return {
        str(d.get("reason")) for d in (details if isinstance(details, list) else [])
        if isinstance(d, Mapping) and d.get("reason")
    }


def check_status(response: httpx.Response, what: str) -> None:
    """Google's error bodies: ``{"error": {code, message, status, details}}``.

    A wrong key is HTTP 400 with reason API_KEY_INVALID (an auth error, not bad input);
    a 429 carries its wait in ``RetryInfo.retryDelay`` rather than ``Retry-After``."""
    if response.status_code < 400:
        return
    with reading(what):
        _check_status(response, what)


def _check_status(response: httpx.Response, what: str) -> None:
    status = response.status_code
    payload = error_body(response)
    message = error_message(payload)
    if status == 400 and "API_KEY_INVALID" in _reasons(payload):
        raise AuthError(
            f"{what}: the provider rejected the API key"
            + (f": {message}" if message else ""), status=status,
        )
    if status == 429 and response.headers.get("retry-after") is None:
        raise RateLimitedError(
            f"{what}: rate limited (HTTP 429)" + (f": {message}" if message else ""),
            status=status, retry_after=retry_delay(payload), sent=False,
        )
    raise_for_status(response, what)


def parse_answer(raw: bytes, model: ModelCaps, resolution: str | None) -> Answer:
    """Read a generateContent answer (blocking: base64 of big images; call in a thread).

    Anything unreadable is a ProtocolError: more images than the model makes
    (``max_images``), an image that is not a JPEG, PNG or WebP within the pixel cap (told
    by its header, before anything is decoded)."""
    with reading("generate"):
        return _parse_answer(raw, model, resolution)


def _parse_answer(raw: bytes, model: ModelCaps, resolution: str | None) -> Answer:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError("generate: the provider's answer is not JSON") from None
    if not isinstance(data, Mapping):
        raise ProtocolError("generate: the provider's answer is not a JSON object")
    feedback = data.get("promptFeedback")
    if isinstance(feedback, Mapping) and feedback.get("blockReason"):
        detail = feedback.get("blockReasonMessage")
        block = text_value(feedback.get("blockReason"), 60) or "no reason given"
        detail = text_value(detail)
        raise ProviderFailedError(
            f"Gemini blocked the prompt ({block})" + (f": {detail}" if detail else "")
        )
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise ProtocolError("generate: the provider's answer has no candidates")
    candidate = candidates[0]
    if not isinstance(candidate, Mapping):
        raise ProtocolError("generate: the provider's answer has a malformed candidate")
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    images: list[AnswerImage] = []
    turn: list[Part] = []
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, Mapping) or part.get("thought"):
            continue  # thoughts (and interim "thought images") are not the answer
        signature = part.get("thoughtSignature")
        signature = signature if isinstance(signature, str) and signature else None
        inline = part.get("inlineData", part.get("inline_data"))
        if isinstance(inline, Mapping):
            b64 = inline.get("data")
            if not isinstance(b64, str) or not b64:
                raise ProtocolError("generate: an image part of the answer has no data")
            if len(images) >= model.max_images:
                raise ProtocolError(
                    f"generate: the answer holds more than {model.max_images} images, more "
                    "than the model makes")
            try:
                decoded = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(
                    "generate: an image of the answer is not valid base64") from None
            try:
                info = identify_result(decoded)
            except ImageCheckError as exc:
                raise ProtocolError(f"generate: an image of the answer is unusable: {exc}"
                                    ) from None
            turn.append(Part(image_index=len(images), signature=signature))
            images.append(AnswerImage(mime=info.mime, data=decoded, signature=signature))
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
            turn.append(Part(text=part["text"], signature=signature))
    text = "\n".join(t.strip() for t in texts if t.strip()) or None
    if not images:
        if text:
            raise ProviderFailedError(text)
        reason = status_value(candidate.get("finishReason"))
        message = text_value(candidate.get("finishMessage"))
        explained = _NO_IMAGE_REASONS.get(reason, f"finish reason {reason or 'not given'}")
        raise ProviderFailedError(
            f"Gemini returned no image: {explained}" + (f" ({message})" if message else "")
        )
    price = model.price_per_image(resolution)
    return Answer(
        images=tuple(images), turn=tuple(turn), text=text,
        remote_id=remote_id_value(data.get("responseId")),
        cost=price * len(images) if price is not None else None,
    )


class GeminiProvider(HttpProvider):
    id = "gemini"
    idempotent_submit = False
    synchronous = True
    caps = GEMINI

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key}

    def url(self, model: str) -> str:
        return f"{self.base_url}/v1beta/models/{quote(model, safe='')}:generateContent"

    def body(self, request: GenerationRequest, history: Sequence[Turn] | None = None
             ) -> dict[str, Any]:
        """The JSON body, built from the capability table's field names."""
        model = validate_request(self.caps, request)
        f = model.fields
        turns = list(request.history if history is None else history)
        user: list[dict[str, Any]] = [{"text": request.prompt}]
        user += [{"inlineData": _inline(r.url, f"reference image {n + 1}")}
                 for n, r in enumerate(request.references)]
        image_config: dict[str, str] = {}
        if request.aspect_ratio:  # unset: the model keeps an edited image's shape
            image_config[f["aspect_ratio"]] = request.aspect_ratio
        if model.resolutions:
            image_config[f["resolution"]] = str(request.resolution or model.default_resolution)
        config: dict[str, Any] = {
            f["modalities"]: ["TEXT", "IMAGE"] if request.with_text else ["IMAGE"],
        }
        if image_config:
            config[f["image_config"]] = image_config
        body: dict[str, Any] = {
            "contents": [
                *(_wire_turn(t, n + 1) for n, t in enumerate(turns)),
                {"role": "user", "parts": user},
            ],
            f["config"]: config,
        }
        if request.google_search:
            body[f["tools"]] = [{f["google_search"]: {}}]
        return body

    def encode(self, request: GenerationRequest) -> bytes:
        """The request body as bytes, within the provider's size limit: the oldest turns of
        the history are left out until it fits (blocking: call it in a thread)."""
        history = list(request.history)
        limit = self.caps.max_request_bytes
        while True:
            content = json.dumps(self.body(request, history), separators=(",", ":")).encode()
            if not limit or len(content) <= limit:
                return content
            if len(history) >= 2:
                del history[:2]  # one (prompt, image) pair
                continue
            raise InputError(
                f"the request is {len(content) / 1e6:.1f} MB with its reference images; "
                f"{self.caps.label} takes at most {limit / 1e6:.0f} MB: use fewer or smaller "
                "references"
            )

    async def generate(self, request: GenerationRequest) -> Answer:
        model = validate_request(self.caps, request)
        content = await asyncio.to_thread(self.encode, request)
        url = self.url(model.model)
        headers = {**self._headers(), "Content-Type": "application/json"}
        import httpx

        timeout = httpx.Timeout(self.caps.call_timeout, connect=15.0)
        resolution = request.resolution or model.default_resolution

        async def once() -> Answer:
            with sent_once("the call", "billed"):
                response = await send(
                    self._client, "POST", url, "generate", content=content, headers=headers,
                    timeout=timeout, max_bytes=self.caps.max_answer_bytes,
                )
                check_status(response, "generate")
                answer: Answer = await asyncio.to_thread(
                    parse_answer, response.content, model, resolution
                )
            return answer

        result: Answer = await with_retries(once, self.policy, retry_unsent_only=True)
        return result
