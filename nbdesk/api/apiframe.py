"""Apiframe v2: ``POST /v2/images/generate`` then poll ``GET /v2/jobs/{id}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from nbdesk.api.answers import (
    cost_value,
    progress_value,
    reading,
    remote_id_value,
    status_value,
    text_value,
)
from nbdesk.api.base import (
    GenerationRequest,
    PollResult,
    ProtocolError,
    RemoteState,
    SubmitResult,
    TransientError,
)
from nbdesk.api.capabilities import APIFRAME
from nbdesk.api.http import parse_json, raise_for_status, send, with_retries
from nbdesk.api.provider import HttpProvider
from nbdesk.api.validate import validate_request

_STATES = {
    "QUEUED": RemoteState.QUEUED,
    "PENDING": RemoteState.QUEUED,
    "PROCESSING": RemoteState.RUNNING,
    "RUNNING": RemoteState.RUNNING,
    "COMPLETED": RemoteState.COMPLETED,
    "SUCCEEDED": RemoteState.COMPLETED,
    "FAILED": RemoteState.FAILED,
    "ERROR": RemoteState.FAILED,
}


def result_urls(result: Any) -> tuple[str, ...]:
    """The docs disagree on ``result``: a URL string, a list, or ``{"images": [...]}``."""
    if isinstance(result, str):
        return (result,) if result.strip() else ()
    if isinstance(result, Mapping):
        for key in ("images", "image_urls", "urls", "url", "image_url", "output"):
            if key in result:
                return result_urls(result[key])
        return ()
    if isinstance(result, list):
        urls: list[str] = []
        for item in result:
            urls.extend(result_urls(item))
        return tuple(urls)
    return ()


class ApiframeProvider(HttpProvider):
    id = "apiframe"
    idempotent_submit = True
    caps = APIFRAME

    def auth_headers(self) -> dict[str, str]:
        return {"X-API-Key": self._key}

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body, built from the capability table's field names."""
        model = validate_request(self.caps, request)
        f = model.fields
        params: dict[str, Any] = {}
        if request.references:
            urls = [r.url for r in request.references]
            params[f["refs"]] = urls[0] if len(urls) == 1 else urls
        params[f["output_format"]] = request.output_format or model.default_format
        params[f["google_search"]] = bool(request.google_search)
        params[f["image_search"]] = bool(request.image_search)
        params[f["aspect_ratio"]] = request.aspect_ratio or model.default_ratio
        if model.resolutions:
            params[f["resolution"]] = request.resolution or model.default_resolution
        return {"prompt": request.prompt, "model": model.model, f["params"]: params}

    async def submit(self, request: GenerationRequest, idempotency_key: str) -> SubmitResult:
        body = self.body(request)
        headers = {**self._headers(), "Idempotency-Key": idempotency_key}
        url = f"{self.base_url}/v2/images/generate"

        async def once() -> SubmitResult:
            response = await send(self._client, "POST", url, "submit", json=body, headers=headers)
            raise_for_status(response, "submit")
            try:
                job_id = self.parse_submit(parse_json(response, "submit"))
            except ProtocolError as exc:
                # The job may exist; resending with the same key is safe and finds it.
                raise TransientError(exc.message, status=exc.status) from None
            return SubmitResult(remote_id=job_id)

        # The same Idempotency-Key on every attempt: a retry can never pay twice.
        result: SubmitResult = await with_retries(once, self.policy)
        return result

    async def poll(self, remote_id: str) -> PollResult:
        url = f"{self.base_url}/v2/jobs/{quote(remote_id, safe='')}"

        async def once() -> PollResult:
            response = await send(self._client, "GET", url, "status", headers=self._headers())
            raise_for_status(response, "status")
            return self.parse_job(parse_json(response, "status"))

        result: PollResult = await with_retries(once, self.policy)
        return result

    @staticmethod
    def parse_submit(data: Any) -> str:
        """The job id of a submit's answer (ProtocolError if it has none, or a wrong one)."""
        with reading("submit"):
            if isinstance(data, Mapping):
                job_id = remote_id_value(data.get("jobId") or data.get("id"))
                if job_id is not None:
                    return job_id
            raise ProtocolError("submit: the provider's answer has no jobId")

    @staticmethod
    def parse_job(data: Any) -> PollResult:
        """A poll's answer (ProtocolError for anything that cannot be read)."""
        with reading("status"):
            return ApiframeProvider._parse_job(data)

    @staticmethod
    def _parse_job(data: Any) -> PollResult:
        if not isinstance(data, Mapping):
            raise ProtocolError("status: the provider's answer is not a JSON object")
        raw = status_value(data.get("status")).upper()
        state = _STATES.get(raw, RemoteState.RUNNING)  # unknown: still running
        cost = data.get("creditCost", data.get("cost"))
        error = data.get("error")
        message = text_value(error.get("message") if isinstance(error, Mapping) else error)
        urls: tuple[str, ...] = ()
        if state is RemoteState.COMPLETED:
            urls = result_urls(data.get("result"))
            if not urls:
                raise ProtocolError("status: the job completed but its result holds no image URL")
        if state is RemoteState.FAILED and not message:
            message = "the provider reported the job as failed (no reason given)"
        return PollResult(
            state=state,
            progress=progress_value(data.get("progress")),
            urls=urls,
            cost=cost_value(cost),
            error=message,
            raw_status=raw,
        )

