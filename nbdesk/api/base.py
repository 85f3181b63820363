"""The provider protocol, the request/result types and the typed errors.

Errors are split by what the caller should do about them:

* ``AuthError``            the key is wrong or revoked: stop, tell the user, never retry.
* ``BadRequestError``      the provider refused the input; its message is shown verbatim.
* ``TransientError``       429 / 5xx / network trouble: retried by the retry policy.
* ``ProviderFailedError``  the provider ran the job and it failed; the reason is shown.
* ``ProtocolError``        the answer made no sense (HTML page, malformed JSON, wrong shape).
* ``UnansweredSubmitError`` a submit without an idempotency key may or may not have been
                           received; it must not be blindly repeated.
* ``InputError``           our own validation refused the input before anything was sent.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class ApiError(Exception):
    """Base of every expected failure of a provider call. ``str()`` is user-facing."""

    kind = "error"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InputError(ApiError):
    kind = "bad_input"


class AuthError(ApiError):
    kind = "auth"


class BadRequestError(ApiError):
    kind = "bad_request"


class TransientError(ApiError):
    kind = "transient"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        #: False when the request certainly never reached the server (connect refused,
        #: 429 / 503 refusals): then even a non-idempotent submit may be repeated.
        self.sent = sent


class RateLimitedError(TransientError):
    kind = "rate_limited"


class ProviderFailedError(ApiError):
    kind = "provider_failed"


class ProtocolError(ApiError):
    kind = "protocol"


class UnansweredSubmitError(ApiError):
    kind = "unanswered"


class RemoteState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class Reference:
    """A reference image as sent on the wire: an http(s) URL or a data: URI."""

    url: str


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str
    aspect_ratio: str | None = None
    resolution: str | None = None
    output_format: str | None = None
    google_search: bool = False
    image_search: bool = False
    cache_key: str | None = None
    references: Sequence[Reference] = ()


@dataclass(frozen=True)
class SubmitResult:
    remote_id: str
    replayed: bool = False


@dataclass(frozen=True)
class PollResult:
    state: RemoteState
    progress: float | None = None  # 0..100 when the provider says
    urls: tuple[str, ...] = ()
    cost: float | None = None
    error: str | None = None
    raw_status: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """One provider's wire protocol. Implementations share the app's one HTTP client."""

    id: str
    idempotent_submit: bool

    async def submit(self, request: GenerationRequest, idempotency_key: str) -> SubmitResult:
        """Create a paid job. Raises ApiError subclasses only."""
        ...

    async def poll(self, remote_id: str) -> PollResult:
        """Read a job's state once. Raises ApiError subclasses only."""
        ...
