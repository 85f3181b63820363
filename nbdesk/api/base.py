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

import contextlib
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard


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
        offline: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        #: False when the request certainly never reached the server (connect refused,
        #: 429 / 503 refusals): then even a non-idempotent submit may be repeated.
        self.sent = sent and not offline
        #: True when the request never left this computer for want of a network: the
        #: provider's name did not resolve, the connection was refused or had no route,
        #: or connecting timed out. (Implies ``sent`` False.)
        self.offline = offline


class RateLimitedError(TransientError):
    kind = "rate_limited"


class ProviderFailedError(ApiError):
    kind = "provider_failed"


class ProtocolError(ApiError):
    kind = "protocol"


class UnansweredSubmitError(ApiError):
    kind = "unanswered"


@contextlib.contextmanager
def sent_once(call: str, risk: str) -> Iterator[None]:
    """The one rule for a call that must not be repeated once it may have reached the
    provider (a submit without an idempotency key, a billed synchronous call): a
    transient failure that provably never left is raised as it is (safe to retry); one
    that was sent, or an unreadable answer, becomes UnansweredSubmitError. ``call`` names
    the call ("the submit"), ``risk`` what may have happened ("accepted", "billed")."""
    try:
        yield
    except TransientError as exc:
        if not exc.sent:
            raise  # provably not taken on: safe to retry
        raise UnansweredSubmitError(
            f"{call} was sent but not answered ({exc.message}); it may or may not have "
            f"been {risk}, so it is not repeated automatically"
        ) from None
    except ProtocolError as exc:
        raise UnansweredSubmitError(
            f"the provider's answer to {call} was unreadable ({exc.message}); it may or "
            f"may not have been {risk}, so it is not repeated automatically"
        ) from None


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
class Part:
    """One part of a conversation turn: text or an image, with the thought signature the
    provider attached to it (sent back unchanged so an edit keeps the model's context)."""

    text: str | None = None
    image: Reference | None = None  # a data: URI (in a request)
    image_index: int | None = None  # in an Answer's turn: stands for ``Answer.images[n]``
    signature: str | None = None


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "model"
    parts: tuple[Part, ...]


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
    with_text: bool = False  # the answer may carry text beside the image
    #: earlier turns of the conversation this request continues (oldest first, pairs of
    #: user and model turns); only for providers with conversational editing
    history: Sequence[Turn] = ()


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


@dataclass(frozen=True)
class AnswerImage:
    """An image that came back inside a synchronous answer."""

    mime: str
    data: bytes
    signature: str | None = None


@dataclass(frozen=True)
class Answer:
    """A synchronous provider's answer: the images, and the model's turn as it must be sent
    back to continue from it (its parts' text and thought signatures; an image part has
    ``image_index`` n, standing for ``images[n]``)."""

    images: tuple[AnswerImage, ...]
    turn: tuple[Part, ...] = ()
    text: str | None = None
    remote_id: str | None = None
    cost: float | None = None


class Provider(Protocol):
    """One provider's wire protocol for remote jobs (submit, then poll).
    Implementations share the app's one HTTP client."""

    id: str
    idempotent_submit: bool
    synchronous: bool
    #: where the provider's API is (its result links are checked against it)
    base_url: str

    async def submit(self, request: GenerationRequest, idempotency_key: str) -> SubmitResult:
        """Create a paid job. Raises ApiError subclasses only."""
        ...

    async def poll(self, remote_id: str) -> PollResult:
        """Read a job's state once. Raises ApiError subclasses only."""
        ...


class SyncProvider(Protocol):
    """A provider whose one call returns the image (no remote job, nothing to poll)."""

    id: str
    idempotent_submit: bool
    synchronous: bool

    async def generate(self, request: GenerationRequest) -> Answer:
        """Make the image(s). Raises ApiError subclasses only: ProviderFailedError when the
        model answered without an image, UnansweredSubmitError when the call may have been
        billed but its answer was lost."""
        ...


AnyProvider = Provider | SyncProvider


def is_sync(provider: AnyProvider) -> TypeGuard[SyncProvider]:
    return provider.synchronous
