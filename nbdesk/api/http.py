"""The app's one HTTP client, the retry policy, error mapping and streamed downloads.

Retry rules (as in well-kept API clients): connect/read errors, 408, 409, 429 and
>= 500 are retried; other 4xx never. ``Retry-After`` is honoured up to a cap,
otherwise exponential backoff ``base * 2**n`` capped, times a jitter in [0.75, 1.0].
Sleeping and randomness are injected so tests run with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import io
import json
import logging
import os
import queue
import random
import socket
import sys
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from nbdesk.api.answers import error_body, reading, text_value
from nbdesk.api.base import (
    ApiError,
    AuthError,
    BadRequestError,
    ProtocolError,
    RateLimitedError,
    TransientError,
)
from nbdesk.api.urls import KIND_NAMES, address_kind, literal_kind

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: Statuses with which an image host refuses a result link (signed links expire).
_LINK_REFUSED = frozenset({401, 403, 404, 410})

Sleep = Callable[[float], Awaitable[None]]

USER_AGENT = "nbdesk/0.1 (+https://github.com/nbdesk)"
#: The encodings asked for (and the only ones accepted): both are decoded here, with a cap
#: on the decoded size (never br or zstd, whatever httpx could decode).
ACCEPT_ENCODING = "gzip, deflate"
RETRY_STATUSES = frozenset({408, 409, 429})


def _without_httpx_cli() -> None:
    """Call before the first ``import httpx``.

    httpx is imported where it is used rather than with this module (the window paints
    before it needs an HTTP client). It also imports its command-line client (click,
    rich, pygments: ~55 ms) whenever those are installed, as they are in the development
    environment (import-linter brings them); nbdesk has no use for it, so it is kept out
    (httpx then defines a stub ``main``)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def make_client(timeout: float = 60.0, max_connections: int = 32) -> httpx.AsyncClient:
    """The one AsyncClient of a process: opened at start, closed at shutdown. Safe to
    call from a worker thread (its SSL context and imports are the slow part)."""
    _without_httpx_cli()
    import httpx

    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=15.0),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        follow_redirects=False,
        verify=True,
    )
    _POOL_SIZE[client] = max_connections
    from nbdesk.api import idle_check

    if not idle_check.install(client):  # (httpx or httpcore changed inside: still works)
        log.warning("the HTTP client's quick idle-connection check could not be installed")
    # httpcore loads its async backend (anyio, sniffio) at the first request; here, on
    # the worker thread that makes the client in the app, not on the GUI thread.
    with contextlib.suppress(ImportError):
        import anyio._backends._asyncio  # noqa: F401
        import sniffio  # noqa: F401
    return client


#: Clients made by make_client -> their connection pool size.
_POOL_SIZE: weakref.WeakKeyDictionary[httpx.AsyncClient, int] = weakref.WeakKeyDictionary()
_SLOTS: weakref.WeakKeyDictionary[httpx.AsyncClient, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


@contextlib.asynccontextmanager
async def _slot(client: httpx.AsyncClient) -> AsyncIterator[None]:
    """Hold one of the client's connections for a request (make_client's clients only).

    Requests beyond the pool size wait here, in a plain FIFO, rather than in httpcore's
    pool, which re-examines every connection for every waiting request each time one is
    released: with hundreds of jobs polling at once that scan was a visible share of
    the event loop's (the GUI thread's) time."""
    size = _POOL_SIZE.get(client)
    if size is None:
        yield
        return
    sem = _SLOTS.get(client)
    if sem is None:
        sem = _SLOTS[client] = asyncio.Semaphore(size)
    async with sem:
        yield


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    base: float = 0.5
    cap: float = 8.0
    retry_after_cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    sleep: Sleep = asyncio.sleep

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 0)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.retry_after_cap))
        backoff: float = min(self.base * 2.0**attempt, self.cap)
        jitter: float = self.rng.uniform(0.75, 1.0)
        return backoff * jitter


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # only here (~8 ms of imports the start-up need not pay)

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    delta: float = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, delta)


def describe_body(response: httpx.Response) -> str:
    """A short, safe description of an unexpected body (for protocol errors)."""
    ctype = response.headers.get("content-type", "")
    if "html" in ctype or response.text.lstrip()[:1] == "<":
        return "an HTML page"
    if not response.content:
        return "an empty body"
    return f"{len(response.content)} bytes of {ctype or 'unknown content'}"


def parse_json(response: httpx.Response, what: str) -> Any:
    with reading(what):  # deep nesting, a number too long to convert: ProtocolError
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProtocolError(
                f"{what}: expected JSON but got {describe_body(response)} "
                f"(HTTP {response.status_code})",
                status=response.status_code,
            ) from None


def error_message(payload: Any, _depth: int = 0) -> str | None:
    """Pull a human message out of the error bodies providers send (a few levels deep,
    cut to a readable length)."""
    if isinstance(payload, str):
        return text_value(payload)
    if not isinstance(payload, Mapping) or _depth > 4:
        return None
    for key in ("error", "message", "code_msg", "detail", "msg"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return text_value(value)
        if isinstance(value, Mapping):
            inner = error_message(value, _depth + 1)
            if inner:
                return inner
        if isinstance(value, list) and value:
            inner = error_message(value[0], _depth + 1)
            if inner:
                return inner
    return None


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Map an HTTP error status to a typed error; 2xx returns quietly."""
    status = response.status_code
    if status < 400:
        return
    message = error_message(error_body(response))
    if status in (401, 403):
        raise AuthError(
            f"{what}: the provider rejected the API key (HTTP {status})"
            + (f": {message}" if message else ""),
            status=status,
        )
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429:
        raise RateLimitedError(
            f"{what}: rate limited (HTTP 429)" + (f": {message}" if message else ""),
            status=status, retry_after=retry_after, sent=False,
        )
    if status in RETRY_STATUSES or status >= 500:
        detail = message or describe_body(response)
        # 503 "No available capacity" is a refusal: the request was not taken on.
        raise TransientError(
            f"{what}: provider unavailable (HTTP {status}): {detail}",
            status=status, retry_after=retry_after, sent=status != 503,
        )
    raise BadRequestError(
        message or f"{what}: the provider refused the request (HTTP {status})", status=status
    )


#: An API answer (not an image) larger than this is refused: no provider sends one.
MAX_ANSWER_BYTES = 2 * 2**20
#: Seconds a whole image download may take (each read has the client's own timeout too).
DOWNLOAD_SECONDS = 300.0


# ---------------------------------------------------------------------------- deadlines

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "nbdesk_http_deadline", default=None)


@contextlib.contextmanager
def deadline(when: float) -> Iterator[None]:
    """Bound every ``send()`` and ``download_to()`` made inside the block (in this task,
    and in tasks it starts) by ``when``, a ``time.monotonic()`` value, as well as by their
    own whole-transfer limits. Nested blocks keep the earliest deadline. A transfer still
    running at ``when`` is abandoned with a TransientError ("did not answer in time"),
    ``sent`` True if the request had been written; ``with_retries`` makes no further
    attempt past it. The engine bounds a call by a job's remaining time this way::

        with http.deadline(job_deadline):
            await provider.poll(remote_id)
    """
    current = _DEADLINE.get()
    token = _DEADLINE.set(when if current is None else min(current, when))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def deadline_left() -> float | None:
    """Seconds until the innermost ``deadline()`` (negative once passed); None outside one."""
    when = _DEADLINE.get()
    return None if when is None else when - time.monotonic()


class _Bound:
    """When one transfer must be over: ``seconds`` from now, or the ``deadline()`` in force,
    whichever comes first."""

    def __init__(self, seconds: float | None) -> None:
        own = None if seconds is None else time.monotonic() + seconds
        job = _DEADLINE.get()
        self.by_deadline = job is not None and (own is None or job <= own)
        self.when = job if self.by_deadline else own
        self.seconds = seconds
        self._scope: asyncio.Timeout | None = None

    def scope(self) -> asyncio.Timeout:
        at = None
        if self.when is not None:  # on the loop's clock, whatever that is
            at = asyncio.get_running_loop().time() + (self.when - time.monotonic())
        self._scope = asyncio.timeout_at(at)
        return self._scope

    def expired(self) -> bool:
        return self._scope is not None and self._scope.expired()

    def error(self, what: str, whom: str, sent: bool) -> TransientError:
        why = ("the time left for the job ran out" if self.by_deadline or self.seconds is None
               else f"no complete answer within {self.seconds:g} s")
        return TransientError(f"{what}: {whom} did not answer in time ({why})", sent=sent)


class _Wire:
    """httpx's ``trace`` extension: notes whether the request was written (its headers
    started on their way), so that an abandoned request is known to be unsent."""

    def __init__(self) -> None:
        self.written = False

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if event.endswith("send_request_headers.started"):
            self.written = True


# ---------------------------------------------------------------------------- decoding


class _Decoder:
    """Undoes a body's Content-Encoding (gzip, deflate, or none) as it streams in, with a
    cap on the DECODED bytes: a small compressed body cannot grow past ``cap`` in memory
    (it is inflated at most a MiB at a time, and refused as soon as it passes the cap)."""

    _STEP = 1 << 20

    def __init__(self, encoding: str, cap: int, too_large: Callable[[], ApiError],
                 what: str) -> None:
        codings = [c for c in (p.strip().lower() for p in encoding.split(","))
                   if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise ProtocolError(
                f"{what}: the answer is encoded as {encoding.strip()[:40]!r}, which nbdesk "
                f"did not ask for (only {ACCEPT_ENCODING})")
        self.coding = codings[0] if codings else None
        self.size = 0  # decoded bytes given out
        self._cap = cap
        self._too_large = too_large
        self._what = what
        self._z: Any = None  # a zlib decompressobj, once its format is known
        self._head = b""  # deflate: the first bytes, until zlib or raw deflate is told
        self._fed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._fed = True
        if self.coding is None:
            self._count(len(data))
            yield data
            return
        if self._z is None:
            if self.coding != "deflate":
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:  # "deflate" is meant as zlib-wrapped; some servers send it raw
                self._head += data
                if len(self._head) < 2:
                    return
                data, self._head = self._head, b""
                wrapped = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
                self._z = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        yield from self._inflate(data)

    def finish(self) -> Iterator[bytes]:
        """The rest, once the body has ended; ProtocolError if it ended mid-stream."""
        if self.coding is None or not self._fed:
            return
        if self._z is None:  # a deflate body of one byte
            raise ProtocolError(f"{self._what}: the compressed answer is cut short")
        yield from self._inflate(b"", drain=True)
        if not self._z.eof:
            raise ProtocolError(f"{self._what}: the compressed answer is cut short")

    def _inflate(self, data: bytes, drain: bool = False) -> Iterator[bytes]:
        z = self._z
        more = drain  # output may be pending in zlib even with no input left
        while True:
            if z.eof:
                data = z.unused_data + data
                if not data.strip(b"\0"):
                    return  # (padding after the end)
                if self.coding == "deflate":
                    raise ProtocolError(f"{self._what}: data after the end of the answer")
                z = self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
            if not data and not more:
                return
            step = min(self._STEP, self._cap - self.size + 1)
            try:
                piece = z.decompress(data, step)
            except zlib.error as exc:
                raise ProtocolError(
                    f"{self._what}: the compressed answer is damaged ({exc})") from None
            data = z.unconsumed_tail
            more = len(piece) == step and not z.eof
            if piece:
                self._count(len(piece))
                yield piece

    def _count(self, n: int) -> None:
        self.size += n
        if self.size > self._cap:
            raise self._too_large()


# ---------------------------------------------------------------------------- requests


async def send(
    client: httpx.AsyncClient, method: str, url: str, what: str, *,
    max_bytes: int = MAX_ANSWER_BYTES, seconds: float | None = None, **kwargs: Any
) -> httpx.Response:
    """One request; transport failures become TransientError (never a raw httpx error).

    The answer is read with a cap on its decoded size (``max_bytes``, MAX_ANSWER_BYTES
    unless the provider's answers carry images): an endless, huge or compressed-huge
    body is a protocol error, not memory spent. The whole exchange must be over within
    ``seconds`` (by default the request's read timeout: the client's, or the one given
    as ``timeout``) and by any ``deadline()`` in force; past either it is abandoned as a
    TransientError ("did not answer in time"). A failure that proves the request never
    left this computer (no DNS, refused, no route, connect timeout) is a TransientError
    with ``offline`` set (so ``sent`` False)."""
    _without_httpx_cli()
    import httpx

    try:
        request = client.build_request(method, url, **kwargs)
    except httpx.InvalidURL as exc:
        raise ProtocolError(f"{what}: invalid URL ({exc})") from None
    request.headers["Accept-Encoding"] = ACCEPT_ENCODING
    wire = _Wire()
    request.extensions = {**request.extensions, "trace": wire}
    if seconds is None:
        seconds = (request.extensions.get("timeout") or {}).get("read")
    bound = _Bound(seconds)
    try:
        async with bound.scope(), _slot(client):
            return await _send(client, request, what, max_bytes)
    except TimeoutError:
        if not bound.expired():
            raise
        raise bound.error(what, "the provider", sent=wire.written) from None
    except httpx.TransportError as exc:
        raise _transport_error(exc, what, "the provider") from None
    except httpx.InvalidURL as exc:
        raise ProtocolError(f"{what}: invalid URL ({exc})") from None


async def _send(
    client: httpx.AsyncClient, request: httpx.Request, what: str, max_bytes: int
) -> httpx.Response:
    response = await client.send(request, stream=True)
    try:
        return await _read_capped(response, what, max_bytes)
    finally:
        await response.aclose()


async def _read_capped(response: httpx.Response, what: str, max_bytes: int) -> httpx.Response:
    """A streamed ``response``'s body read whole, decoded, with a cap on the decoded bytes
    (ProtocolError past it): a response as httpx would have made it, body in memory."""
    import httpx

    body = io.BytesIO()
    try:
        def too_large() -> ProtocolError:
            return ProtocolError(
                f"{what}: the provider's answer is too large (over {_mib(max_bytes)}); "
                "refused", status=response.status_code)

        decoder = _Decoder(response.headers.get("content-encoding", ""), max_bytes,
                           too_large, what)
        declared = response.headers.get("content-length", "")
        if decoder.coding is None and declared.isdigit() and int(declared) > max_bytes:
            raise too_large()
        async for block in response.aiter_raw():
            for piece in decoder.feed(block):
                body.write(piece)
        for piece in decoder.finish():
            body.write(piece)
        content = body.getvalue()  # (the buffer itself, not a copy)
    except BaseException:
        body.close()  # a partial answer is freed now, not when the error is dropped
        raise
    # The body as decoded: it no longer has the encoding nor the length it was sent with.
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=content,
                          request=response.request, extensions=response.extensions)


#: The most of an error page (an image host's 4xx/5xx) that is read for its message.
MAX_ERROR_BYTES = 64 * 2**10


def _transport_error(exc: httpx.TransportError, what: str, whom: str) -> TransientError:
    """The TransientError for a network failure: ``offline`` (and not sent) when it proves
    the request never left this computer, ``sent`` False when no request was written."""
    import httpx

    reason = _reason(exc)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        if _tls_failure(exc):  # reached a server, but no secure connection: not offline
            return TransientError(f"{what}: no secure connection to {whom} ({reason})",
                                  sent=False)
        return TransientError(f"{what}: cannot reach {whom} ({reason})", offline=True)
    if isinstance(exc, httpx.PoolTimeout):
        return TransientError(f"{what}: cannot reach {whom} (no free connection)", sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{what}: {whom} did not answer in time ({reason})")
    return TransientError(f"{what}: connection failed ({reason})")


def _tls_failure(exc: BaseException) -> bool:
    import ssl

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


async def with_retries(
    call: Callable[[], Awaitable[Any]],
    policy: RetryPolicy,
    *,
    retry_unsent_only: bool = False,
    on_retry: Callable[[ApiError, float], None] | None = None,
) -> Any:
    """Run ``call`` until it succeeds, fails for good, or the attempts run out.

    With ``retry_unsent_only`` (a non-idempotent submit) only refusals (429, 503) that
    prove the request was not taken on are retried; any other transient failure, and one
    that never left the machine (``offline``), is re-raised.
    Inside a ``deadline()``, no attempt is begun after the deadline (nor a wait that
    would end past it): the last failure is raised instead.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except TransientError as exc:
            if retry_unsent_only and (exc.sent or exc.offline):
                # Sent: never repeated. Never left the machine: the caller's to wait out
                # (the engine puts the job back in the queue first, so that nbdesk
                # stopping meanwhile leaves it queued, not "maybe sent").
                raise
            attempt += 1
            if attempt >= policy.max_attempts:
                raise
            wait = policy.delay(attempt - 1, exc.retry_after)
            left = deadline_left()
            if left is not None and wait >= left:
                raise
            log.info("retrying after %s in %.2fs (attempt %d)", exc.kind, wait, attempt + 1)
            if on_retry is not None:
                on_retry(exc, wait)
            await policy.sleep(wait)


# ---------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    sha256: str
    content_type: str


def _shown(url: str) -> str:
    return repr(url if len(url) <= 80 else url[:77] + "...")


async def check_result_url(url: str, base_url: str) -> None:
    """The one rule for where a result may be fetched from. ProtocolError unless ``url``
    is http(s) with a host; not plain http when the provider (``base_url``) is https; and
    on the internet, not on this computer, the LAN, a link-local, unspecified, multicast
    or reserved address (IP literals of any form, ``localhost``, and names that resolve
    to such an address: resolved here, off the event loop) — unless the provider itself
    is on that same kind of address (the simulator and Demo on 127.0.0.1). A name that
    does not resolve is a TransientError with ``offline`` set (the download cannot start).
    Redirects are never followed, so the address checked is the one fetched."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise ProtocolError(
            f"the provider returned a result URL that is not valid: {_shown(url)}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ProtocolError(
            f"the provider returned a result URL that is not http(s): {_shown(url)}")
    if parts.scheme == "http" and urlsplit(base_url).scheme == "https":
        raise ProtocolError(
            f"the provider returned a plain http:// result URL ({_shown(url)}) although it "
            "is reached over https://; refused")
    kind = await _host_kind(host, parts.port)
    if kind is None:
        return
    origin = urlsplit(base_url)
    try:
        origin_kind = await _host_kind(origin.hostname or "", origin.port)
    except TransientError:
        origin_kind = None
    if origin_kind != kind:
        raise ProtocolError(
            f"the provider returned a result URL on {KIND_NAMES[kind]} ({_shown(url)}); "
            "refused: results are fetched from such an address only when the provider "
            "itself is on one")


async def _host_kind(host: str, port: int | None) -> str | None:
    """urls.address_kind of ``host`` (for a name: of the most private address it resolves
    to); TransientError (offline) when it does not resolve."""
    known, kind = literal_kind(host)
    if known:
        return kind
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host.rstrip("."), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TransientError(f"download: cannot reach the image host ({_reason(exc)})",
                             offline=True) from None
    kinds = {address_kind(str(info[4][0]).split("%")[0]) for info in found}
    return next((k for k in KIND_NAMES if k in kinds), None)


class StreamCheck(Protocol):
    """Looks at a download's bytes as they are written (on the writer thread, in order,
    once each). It must not raise: it records what it found for its owner to read once
    ``download_to`` has returned."""

    def feed(self, block: bytes) -> None: ...


#: The writer flushes a download to disk every so many bytes while it still streams, so
#: that the final fsync, which the download waits for, has little left to write: at 16
#: MiB it took ~12 ms of a 50 MB download's ~180 ms on the bench machine, at 4 MiB ~4 ms
#: (each interim sync blocks only the writer; the queue in front of it absorbs that).
_SYNC_EVERY = 4 << 20
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)  # not on macOS/Windows
#: Downloads larger than this (or of unknown length) are hashed and checked on a thread
#: of their own, beside the one that writes; smaller ones need not take a second thread
#: from the pool (with hundreds of jobs, starting one stalls the loop that asks for it).
_HASH_APART_OVER = 8 << 20


class _BlockWriter:
    """Hashes and writes a download's blocks on two (pooled) threads.

    The event loop only queues blocks (``put``), so hashing, checking and disk writes
    overlap the transfer and cost the loop no thread round trip per block. One thread
    writes (and waits on the disk's syncs); the other hashes the same blocks and feeds
    the content check, so neither waits for the other's work (``apart``; a small file
    is hashed by the writing thread). The writing thread owns
    the file from ``open`` to ``close``/``unlink``: however the download ends (success,
    error, cancellation at any await point) the handle is closed and a discarded temp
    file removed by the one thread that holds it, and only after the hashing thread has
    stopped. At most ``max_queued`` bytes wait in memory for either thread; past that
    ``put`` waits (back-pressure on the socket).
    """

    def __init__(self, dest: Path, loop: asyncio.AbstractEventLoop, max_queued: int,
                 check: StreamCheck | None = None, *, apart: bool = True) -> None:
        self._dest = dest
        self._check = check
        self._apart = apart  # False: the writing thread hashes too (small files)
        self._loop = loop
        self._max_queued = max_queued
        self._cond = threading.Condition()
        # None: the end (keep the file). Each thread has its queue of the same blocks.
        self._blocks: deque[bytes | None] = deque()
        self._unhashed: deque[bytes | None] = deque()
        self._queued = 0  # bytes not yet written
        self._hash_queued = 0  # bytes not yet hashed
        self._idle = 0  # threads waiting for a block
        self._abort = False
        self._error: BaseException | None = None
        self._kept = False  # the thread closed a complete file and left it in place
        self._room: asyncio.Future[None] | None = None
        self._digest = hashlib.sha256()
        self._hashed = threading.Event()  # the hashing thread has stopped
        self._done: asyncio.Future[None] = loop.create_future()
        if apart:
            _WRITERS.submit(self._hash)
        else:
            self._hashed.set()
        _WRITERS.submit(self._run)

    # -- the event loop's side

    async def put(self, block: bytes) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            self._blocks.append(block)
            self._queued += len(block)
            if self._apart:
                self._unhashed.append(block)
                self._hash_queued += len(block)
            room = None
            if max(self._queued, self._hash_queued) > self._max_queued:
                room = self._room = self._loop.create_future()
            if self._idle:  # waking a thread costs the loop; a busy one needs no call
                self._cond.notify_all()
        if room is not None:
            await room

    async def finish(self) -> str:
        """Flush, fsync and close the file; the SHA-256 of everything put."""
        with self._cond:
            self._blocks.append(None)
            self._unhashed.append(None)
            self._cond.notify_all()
        await asyncio.shield(self._done)
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    async def discard(self) -> None:
        """Stop writing, close the file and remove it; waits until that is done."""
        with self._cond:
            self._abort = True
            self._blocks.clear()
            self._unhashed.clear()
            self._cond.notify_all()
        await asyncio.shield(self._done)
        if self._kept:  # finished, but the download failed after (cancelled in finish())
            await asyncio.shield(asyncio.to_thread(self._dest.unlink, missing_ok=True))

    # -- the threads

    def _next(self, blocks: deque[bytes | None]) -> tuple[bool, bytes | None]:
        """Under the lock: wait for the next block of ``blocks``; (False, None) once the
        download is abandoned (aborted, failed, or its loop is gone)."""
        while not blocks and not self._abort and self._error is None:
            self._idle += 1
            try:
                woken = self._cond.wait(timeout=1.0)
            finally:
                self._idle -= 1
            if not woken and self._orphaned():
                self._abort = True
        if self._abort or self._error is not None:
            return False, None
        return True, blocks.popleft()

    def _feed(self, block: bytes) -> None:
        self._digest.update(block)  # releases the GIL for large blocks
        if self._check is not None:
            self._check.feed(block)

    def _hash(self) -> None:
        try:
            while True:
                with self._cond:
                    _, block = self._next(self._unhashed)
                    if block is not None:
                        self._hash_queued -= len(block)
                        self._wake_putter()
                if block is None:
                    break
                self._feed(block)
        except BaseException as exc:
            with self._cond:
                self._error = self._error or exc
                self._cond.notify_all()
        finally:
            self._hashed.set()

    def _run(self) -> None:
        fh: BinaryIO | None = None
        error: BaseException | None = None
        unsynced = 0
        try:
            fh = open(self._dest, "wb")  # noqa: SIM115 (closed below, on every path)
            while True:
                with self._cond:
                    going, block = self._next(self._blocks)
                    if not going:
                        break
                    if block is not None:
                        self._queued -= len(block)
                        self._wake_putter()
                if block is None:
                    fh.flush()
                    os.fsync(fh.fileno())
                    fh.close()
                    fh = None
                    self._kept = True
                    break
                if not self._apart:
                    self._feed(block)
                fh.write(block)
                unsynced += len(block)
                if unsynced >= _SYNC_EVERY:  # so that the final fsync has little left to do
                    fh.flush()
                    _datasync(fh.fileno())
                    unsynced = 0
        except BaseException as exc:
            error = exc
        finally:
            if error is not None:
                with self._cond:
                    self._error = self._error or error
                    self._cond.notify_all()
            self._hashed.wait()  # the digest is complete, or the hashing has stopped
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
            failed = self._error is not None or self._abort
            if failed:
                self._kept = False
                with contextlib.suppress(OSError):
                    self._dest.unlink(missing_ok=True)
            with self._cond:
                self._wake_putter()
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                self._loop.call_soon_threadsafe(_resolve, self._done)

    def _orphaned(self) -> bool:
        """Nobody will send more: the loop is gone (its coroutine never finished)."""
        return self._loop.is_closed()

    def _wake_putter(self) -> None:
        # Under the lock. A waiting put() resumes once both queues are half drained.
        room = self._room
        if room is not None and (
                max(self._queued, self._hash_queued) <= self._max_queued // 2
                or self._error or self._abort):
            self._room = None
            self._loop.call_soon_threadsafe(_resolve, room)


class _DaemonPool:
    """Reused daemon threads for the download writers. Starting a thread waits until it
    runs (on the loop's thread, which may be the GUI's), so threads are kept for the next
    download; daemon ones, so that a writer can never hold up the interpreter's exit (the
    temp file it leaves is swept at the next start)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            grow = self._idle == 0
            if grow:
                self._count += 1
                name = f"{self._name}-{self._count}"
            else:
                self._idle -= 1
        self._jobs.put(fn)
        if grow:
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            fn = self._jobs.get()
            try:
                fn()
            except BaseException:  # the writers catch everything; never lose the thread
                log.exception("download writer failed")
            with self._lock:
                self._idle += 1


_WRITERS = _DaemonPool("nbdesk-download")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def download_to(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    origin: str,
    max_bytes: int,
    chunk: int = 1 << 20,
    max_queued: int = 8 << 20,
    check: StreamCheck | None = None,
    seconds: float = DOWNLOAD_SECONDS,
) -> Download:
    """Stream ``url`` into ``dest`` (a temp path): hashed, size-capped, fsynced; the
    writer gets blocks of about ``chunk`` bytes.

    ``origin`` is the provider's base URL: ``check_result_url`` decides from it whether
    ``url`` may be fetched at all. The caller checks the content and renames it into
    place. On any failure the partial file is removed and a typed error raised
    (TransientError for network trouble, short bodies and a download not over within
    ``seconds`` or by the ``deadline()`` in force; ProtocolError for an oversize or
    unusable answer); ``OSError`` when the file cannot be written. An image is asked for
    unencoded; one sent gzip- or deflate-encoded anyway is decoded (the cap applies to
    the decoded bytes, which are what is stored), any other encoding is refused.
    Hashing and file work run on a writer thread (the loop may be the GUI's); cancelled
    at any point, the download leaves no open handle and no file behind once it has
    unwound. ``check`` sees every block written, on that thread
    (``images.PngStreamCheck``: the content check without a second pass over the file).
    """
    _without_httpx_cli()
    import httpx

    what = "download"
    size = 0
    writer: _BlockWriter | None = None
    bound = _Bound(seconds)
    wire = _Wire()
    try:
        async with bound.scope():
            await check_result_url(url, origin)
            async with _slot(client), client.stream(
                    "GET", url, headers={"Accept-Encoding": "identity"},
                    extensions={"trace": wire}) as response:
                if response.status_code >= 400:
                    if response.status_code in _LINK_REFUSED:
                        # Image links carry no key: a refusal means the link, not the key.
                        raise BadRequestError(
                            f"download: the image link was refused (HTTP "
                            f"{response.status_code}); it may have expired. Retry asks the "
                            "provider for a fresh link (no new payment)",
                            status=response.status_code)
                    try:  # the error page, for its message: read with a cap, as answers are
                        page = await _read_capped(response, what, MAX_ERROR_BYTES)
                    except ProtocolError:
                        page = httpx.Response(response.status_code, request=response.request)
                    raise_for_status(page, what)
                if response.status_code != 200:
                    raise ProtocolError(f"{what}: unexpected HTTP {response.status_code}")

                def too_large() -> ProtocolError:
                    return ProtocolError(
                        f"{what}: the image is over the {_mib(max_bytes)} limit")

                decoder = _Decoder(response.headers.get("content-encoding", ""), max_bytes,
                                   too_large, what)
                header = response.headers.get("content-length")
                declared = int(header) if header is not None and header.isdigit() else None
                if decoder.coding is None and declared is not None and declared > max_bytes:
                    raise ProtocolError(
                        f"{what}: the image is {_mib(declared)}, "
                        f"over the {_mib(max_bytes)} limit"
                    )
                ctype = response.headers.get("content-type", "")
                apart = (declared is None or decoder.coding is not None
                         or declared > _HASH_APART_OVER)
                writer = _BlockWriter(dest, asyncio.get_running_loop(), max_queued, check,
                                      apart=apart)
                # The pieces as read (httpx's own chunking, aiter_raw(n), copies every byte
                # three times on the loop's thread), handed on ~``chunk`` bytes at a time.
                pending: list[bytes] = []
                pending_size = 0
                received = 0  # bytes on the wire (before decoding)
                async for raw in response.aiter_raw():
                    received += len(raw)
                    for piece in decoder.feed(raw):
                        pending.append(piece)
                        pending_size += len(piece)
                        if pending_size >= chunk:
                            block = b"".join(pending)
                            pending.clear()
                            pending_size = 0
                            await writer.put(block)
                if declared is not None and declared != received:
                    raise TransientError(
                        f"{what}: the connection ended early ({received} of {declared})")
                pending.extend(decoder.finish())
                size = decoder.size
                if pending:
                    await writer.put(b"".join(pending))
                if size == 0:
                    raise ProtocolError(f"{what}: the provider sent an empty file")
            sha256 = await writer.finish()
    except TimeoutError:
        await _discard(writer, dest)
        if not bound.expired():
            raise
        raise bound.error(what, "the image host", sent=wire.written) from None
    except httpx.HTTPError as exc:
        await _discard(writer, dest)
        if isinstance(exc, httpx.TransportError):
            raise _transport_error(exc, what, "the image host") from None
        raise ProtocolError(f"{what}: {_reason(exc)}") from None
    except BaseException:
        await _discard(writer, dest)
        raise
    return Download(path=dest, size=size, sha256=sha256, content_type=ctype)


async def _discard(writer: _BlockWriter | None, dest: Path) -> None:
    if writer is not None:
        await writer.discard()  # the writer thread closes and removes its file
    else:  # a stale file of an earlier attempt
        await asyncio.shield(asyncio.to_thread(dest.unlink, missing_ok=True))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
