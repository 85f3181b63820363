"""APIFree: ``POST /v1/image/submit`` then poll ``GET /v1/image/{id}/result``.

Every answer is an envelope ``{code, code_msg, trace_id, resp_data}``; errors may come
with HTTP 200 and ``code != 200``, so the envelope's code is checked, not only the status.
APIFree has no idempotency key: a submit is retried only when the failure proves the
request was not taken on (connection refused, 429, 503); any other unanswered submit
raises UnansweredSubmitError and the engine marks the job interrupted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nbdesk.api.answers import cost_value, reading, remote_id_value, status_value, text_value
from nbdesk.api.base import (
    AuthError,
    BadRequestError,
    GenerationRequest,
    PollResult,
    ProtocolError,
    RateLimitedError,
    RemoteState,
    SubmitResult,
    TransientError,
    UnansweredSubmitError,
    sent_once,
)
from nbdesk.api.capabilities import APIFREE
from nbdesk.api.http import parse_json, raise_for_status, send, with_retries
from nbdesk.api.provider import HttpProvider
from nbdesk.api.validate import validate_request

if TYPE_CHECKING:  # imported with the client (nbdesk.api.http.make_client)
    import httpx

# The doc names the statuses two ways; both are accepted, unknown ones mean "running".
_STATES = {
    "queuing": RemoteState.QUEUED,
    "queued": RemoteState.QUEUED,
    "pending": RemoteState.QUEUED,
    "processing": RemoteState.RUNNING,
    "running": RemoteState.RUNNING,
    "success": RemoteState.COMPLETED,
    "completed": RemoteState.COMPLETED,
    "succeeded": RemoteState.COMPLETED,
    "error": RemoteState.FAILED,
    "failed": RemoteState.FAILED,
}


def unwrap(response: httpx.Response, what: str) -> Mapping[str, Any]:
    """Check the HTTP status and the envelope's code; return ``resp_data``."""
    with reading(what):
        raise_for_status(response, what)
        return envelope(parse_json(response, what), what)


def envelope(data: Any, what: str) -> Mapping[str, Any]:
    """The envelope's ``resp_data``, or the typed error its ``code`` stands for."""
    with reading(what):
        return _envelope(data, what)


def _envelope(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{what}: the provider's answer is not a JSON object")
    code = data.get("code")
    message = data.get("code_msg") or data.get("error") or data.get("message")
    message = text_value(message) or ""
    if code is not None and code != 200 and code != "200":
        num = 0
        if isinstance(code, int | float) and not isinstance(code, bool) and 0 <= code < 1000:
            num = int(code)
        elif isinstance(code, str) and code.strip().isdigit() and len(code.strip()) <= 3:
            num = int(code.strip())
        if num in (401, 403):
            raise AuthError(
                f"{what}: the provider rejected the API key"
                + (f": {message}" if message else ""),
                status=num,
            )
        if num == 429:
            raise RateLimitedError(
                f"{what}: rate limited" + (f": {message}" if message else ""), sent=False
            )
        if num >= 500:
            raise TransientError(
                f"{what}: provider error {num}" + (f": {message}" if message else "")
            )
        shown = text_value(code if isinstance(code, str) else None, 40) or str(num or "?")
        raise BadRequestError(message or f"{what}: the provider refused the request (code "
                              f"{shown})")
    resp = data.get("resp_data")
    if not isinstance(resp, Mapping):
        raise ProtocolError(f"{what}: the provider's answer has no resp_data object")
    return resp


class ApifreeProvider(HttpProvider):
    id = "apifree"
    idempotent_submit = False
    caps = APIFREE

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        model = validate_request(self.caps, request)
        f = model.fields
        body: dict[str, Any] = {
            "model": model.model,
            "prompt": request.prompt,
            f["aspect_ratio"]: request.aspect_ratio or model.default_ratio,
            f["resolution"]: request.resolution or model.default_resolution,
        }
        if request.cache_key:
            body[f["cache_key"]] = request.cache_key
        if request.references:
            body[f["refs"]] = [r.url for r in request.references]
        return body

    async def submit(self, request: GenerationRequest, idempotency_key: str) -> SubmitResult:
        # idempotency_key is unused on the wire: APIFree has none.
        body = self.body(request)
        url = f"{self.base_url}/v1/image/submit"

        async def once() -> SubmitResult:
            with sent_once("the submit", "accepted"):
                response = await send(
                    self._client, "POST", url, "submit", json=body, headers=self._headers()
                )
                request_id = self.parse_submit(unwrap(response, "submit"))
            if request_id is None:
                raise UnansweredSubmitError(
                    "the provider's answer to the submit has no request_id; it is not "
                    "repeated automatically"
                )
            return SubmitResult(remote_id=request_id)

        result: SubmitResult = await with_retries(once, self.policy, retry_unsent_only=True)
        return result

    async def poll(self, remote_id: str) -> PollResult:
        url = f"{self.base_url}/v1/image/{quote(remote_id, safe='')}/result"

        async def once() -> PollResult:
            response = await send(self._client, "GET", url, "status", headers=self._headers())
            return self.parse_result(unwrap(response, "status"))

        result: PollResult = await with_retries(once, self.policy)
        return result

    @staticmethod
    def parse_submit(resp: Mapping[str, Any]) -> str | None:
        """The request id of a submit's ``resp_data``; None when it has no usable one."""
        with reading("submit"):
            return remote_id_value(resp.get("request_id"))

    @staticmethod
    def parse_result(resp: Mapping[str, Any]) -> PollResult:
        """A poll's ``resp_data`` (ProtocolError for anything that cannot be read)."""
        with reading("status"):
            return ApifreeProvider._parse_result(resp)

    @staticmethod
    def _parse_result(resp: Mapping[str, Any]) -> PollResult:
        if not isinstance(resp, Mapping):
            raise ProtocolError("status: the provider's resp_data is not a JSON object")
        raw = status_value(resp.get("status")).lower()
        state = _STATES.get(raw, RemoteState.RUNNING)
        usage = resp.get("usage")
        cost = usage.get("cost") if isinstance(usage, Mapping) else None
        message = text_value(resp.get("error"))
        urls: tuple[str, ...] = ()
        if state is RemoteState.COMPLETED:
            images = resp.get("image_list")
            items = images if isinstance(images, list) else []
            found: list[str] = []
            for item in items:
                if isinstance(item, str):
                    found.append(item)
                elif isinstance(item, Mapping) and isinstance(item.get("url"), str):
                    found.append(item["url"])
            urls = tuple(found)
            if not urls:
                raise ProtocolError("status: the job completed but image_list holds no URL")
        if state is RemoteState.FAILED and not message:
            message = "the provider reported the job as failed (no reason given)"
        return PollResult(
            state=state,
            urls=urls,
            cost=cost_value(cost),
            error=message,
            raw_status=raw,
        )
