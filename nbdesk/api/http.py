"""The app's one HTTP client, the retry policy, error mapping and streamed downloads.

Retry rules (as in well-kept API clients): connect/read errors, 408, 409, 429 and
>= 500 are retried; other 4xx never. ``Retry-After`` is honoured up to a cap,
otherwise exponential backoff ``base * 2**n`` capped, times a jitter in [0.75, 1.0].
Sleeping and randomness are injected so tests run with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: Statuses with which an image host refuses a result link (signed links expire).
_LINK_REFUSED = frozenset({401, 403, 404, 410})

Sleep = Callable[[float], Awaitable[None]]

USER_AGENT = "nbdesk/0.1 (+https://github.com/nbdesk)"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
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
        headers={"User-Agent": USER_AGENT},
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


def check_base_url(url: str) -> str:
    """A provider base URL must be https, or plain http on a loopback address only; never
    with credentials in it (they would travel with every request, and end up in logs)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise ValueError(f"base URL {url!r} is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("a base URL must not contain a user name or password")
    if parts.scheme == "https" and host:
        return url.rstrip("/")
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return url.rstrip("/")
    raise ValueError(
        f"base URL {url!r} must use https:// (plain http:// only for 127.0.0.1 or localhost)"
    )


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


async def send(
    client: httpx.AsyncClient, method: str, url: str, what: str, *,
    max_bytes: int = MAX_ANSWER_BYTES, **kwargs: Any
) -> httpx.Response:
    """One request; transport failures become TransientError (never a raw httpx error).

    The answer is read with a size cap (``max_bytes``, MAX_ANSWER_BYTES unless the
    provider's answers carry images): an endless or huge body is a protocol error, not
    memory spent."""
    _without_httpx_cli()
    import httpx

    try:
        request = client.build_request(method, url, **kwargs)
        async with _slot(client):
            return await _send(client, request, what, max_bytes)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise TransientError(
            f"{what}: cannot reach the provider ({_reason(exc)})", sent=False
        ) from None
    except httpx.TimeoutException as exc:
        raise TransientError(
            f"{what}: the provider did not answer in time ({_reason(exc)})"
        ) from None
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: connection failed ({_reason(exc)})") from None
    except httpx.InvalidURL as exc:
        raise ProtocolError(f"{what}: invalid URL ({exc})") from None


async def _send(
    client: httpx.AsyncClient, request: httpx.Request, what: str, max_bytes: int
) -> httpx.Response:
    import httpx

    response = await client.send(request, stream=True)
    try:
        body = bytearray()
        async for block in response.aiter_raw():
            body += block
            if len(body) > max_bytes:
                limit = _mib(max_bytes)
                raise ProtocolError(
                    f"{what}: the provider's answer is too large (over {limit}); refused",
                    status=response.status_code,
                )
    finally:
        await response.aclose()
    return httpx.Response(
        response.status_code, headers=response.headers, content=bytes(body),
        request=request,
    )


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

    With ``retry_unsent_only`` (a non-idempotent submit) only failures that prove the
    request was not taken on are retried; any other transient failure is re-raised.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except TransientError as exc:
            if retry_unsent_only and exc.sent:
                raise
            attempt += 1
            if attempt >= policy.max_attempts:
                raise
            wait = policy.delay(attempt - 1, exc.retry_after)
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


def check_download_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError(f"the provider returned a result URL that is not http(s): {url[:80]!r}")


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
    max_bytes: int,
    chunk: int = 1 << 20,
    max_queued: int = 8 << 20,
    check: StreamCheck | None = None,
) -> Download:
    """Stream ``url`` into ``dest`` (a temp path): hashed, size-capped, fsynced; the
    writer gets blocks of about ``chunk`` bytes.

    The caller checks the content and renames it into place. On any failure the
    partial file is removed and a typed error raised (TransientError for network
    trouble and short bodies, ProtocolError for an oversize or unusable answer);
    ``OSError`` when the file cannot be written. Hashing and file work run on a writer
    thread (the loop may be the GUI's); cancelled at any point, the download leaves no
    open handle and no file behind once it has unwound. ``check`` sees every block
    written, on that thread (``images.PngStreamCheck``: the content check without a
    second pass over the file).
    """
    check_download_url(url)
    _without_httpx_cli()
    import httpx

    what = "download"
    size = 0
    writer: _BlockWriter | None = None
    try:
        async with _slot(client), client.stream("GET", url) as response:
            if response.status_code >= 400:
                await response.aread()
                if response.status_code in _LINK_REFUSED:
                    # Image links carry no key: a refusal means the link, not the key.
                    raise BadRequestError(
                        f"download: the image link was refused (HTTP "
                        f"{response.status_code}); it may have expired. Retry asks the "
                        "provider for a fresh link (no new payment)",
                        status=response.status_code)
                raise_for_status(response, what)
            if response.status_code != 200:
                raise ProtocolError(f"{what}: unexpected HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ProtocolError(
                    f"{what}: the image is {_mib(int(declared))}, "
                    f"over the {_mib(max_bytes)} limit"
                )
            ctype = response.headers.get("content-type", "")
            apart = declared is None or not declared.isdigit() or int(declared) > _HASH_APART_OVER
            writer = _BlockWriter(dest, asyncio.get_running_loop(), max_queued, check,
                                  apart=apart)
            # The pieces as read (httpx's own chunking, aiter_raw(n), copies every byte
            # three times on the loop's thread), handed on ~``chunk`` bytes at a time.
            pending: list[bytes] = []
            pending_size = 0
            async for piece in response.aiter_raw():
                size += len(piece)
                if size > max_bytes:
                    raise ProtocolError(f"{what}: the image is over the {_mib(max_bytes)} limit")
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= chunk:
                    block = b"".join(pending)
                    pending.clear()
                    pending_size = 0
                    await writer.put(block)
            if pending:
                await writer.put(b"".join(pending))
            if declared is not None and declared.isdigit() and int(declared) != size:
                raise TransientError(f"{what}: the connection ended early ({size} of {declared})")
            if size == 0:
                raise ProtocolError(f"{what}: the provider sent an empty file")
        sha256 = await writer.finish()
    except httpx.HTTPError as exc:
        await _discard(writer, dest)
        if isinstance(exc, httpx.TimeoutException):
            raise TransientError(f"{what}: timed out ({_reason(exc)})") from None
        raise TransientError(f"{what}: connection failed ({_reason(exc)})") from None
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
