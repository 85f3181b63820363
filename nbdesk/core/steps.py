"""One job's steps, each persisted before its side effect: submit (or generate) until
answered, poll, download, store; every call bounded by the job's one deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from nbdesk.api.base import (
    AnyProvider,
    ApiError,
    GenerationRequest,
    InputError,
    PollResult,
    ProtocolError,
    Provider,
    RemoteState,
    SubmitResult,
    SyncProvider,
    TransientError,
    UnansweredSubmitError,
    is_sync,
)
from nbdesk.api.capabilities import PROVIDERS
from nbdesk.api.http import Download, download_to
from nbdesk.api.http import deadline as http_deadline  # (engine has its own _deadline)
from nbdesk.api.images import ImageCheckError, ImageInfo, PngStreamCheck, probe_file
from nbdesk.core.conversation import build_request
from nbdesk.core.failpoints import failpoint
from nbdesk.core.jobs import OFFLINE_NOTE, ErrorKind, Job, JobState
from nbdesk.core.library import LeaseLost, StoredImage
from nbdesk.core.sync_answer import SyncAnswers, answer_markers

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

INTERRUPTED_MESSAGE = (
    "the submit may or may not have reached {label} (the app stopped or the connection "
    "broke before the answer); {label} has no idempotency key, so it was not sent again. "
    "Retry sends it again — a new paid submission."
)

#: Seconds past a job's deadline at which a call the HTTP layer has not ended is cut.
_BACKSTOP = 1.0


class _OutOfTime(Exception):
    """The job's deadline passed while a provider call or a download was under way."""


async def fetch_image(client: httpx.AsyncClient, url: str, tmp: Path, max_bytes: int, *,
                      origin: str) -> tuple[ImageInfo, Download]:
    """A result image downloaded to ``tmp`` and proved whole (``ImageCheckError`` if it
    is not), as the engine stores it. A PNG is checked on the writer thread as its bytes
    go by, so it is not read back; whatever that check did not prove (other formats, or
    a damaged PNG) gets the full ``probe_file`` check as before, which then decides."""
    check = PngStreamCheck()
    got = await download_to(client, url, tmp, origin=origin, max_bytes=max_bytes, check=check)
    info = await asyncio.to_thread(partial(probe_file, tmp, png=check.proof()))
    return info, got



class JobSteps(SyncAnswers):
    """The steps of one job, from its state to the next (``Engine`` runs them)."""

    # ------------------------------------------------------------------ the job's deadline
    # A job has one deadline: ``job_timeout`` from when this process took it up (queued
    # and sent, or resumed, or retried). It bounds the whole of the job's work here, every
    # provider call (submit, generate, poll) and every download *while it is under way*,
    # not only the waits between them. A job resumed or retried gets a fresh one.

    def _deadline(self, job_id: str) -> float:
        loop_now = asyncio.get_running_loop().time()
        return self._deadlines.setdefault(job_id, loop_now + self.config.job_timeout)

    def _time_left(self, job_id: str) -> float:
        return self._deadline(job_id) - asyncio.get_running_loop().time()

    async def _within(self, job_id: str, call: Awaitable[T], grace: float = 0.0) -> T:
        """``call`` cut at the job's deadline (plus ``grace``).

        The HTTP layer cuts its own transfer at that moment (``http.deadline``) and says
        whether the request had left: a TransientError, which the callers treat as any
        other at the deadline. The timeout here, a moment later, is the backstop for what
        is not a transfer (a hung thread): ``_OutOfTime``."""
        loop = asyncio.get_running_loop()
        when = self._deadline(job_id) + grace
        with http_deadline(time.monotonic() + (when - loop.time())):
            try:
                async with asyncio.timeout_at(when + _BACKSTOP):
                    return await call
            except TimeoutError:
                if loop.time() >= when:
                    raise _OutOfTime(job_id) from None
                raise

    async def _out_of_time(self, job_id: str, idempotent: bool) -> Job:
        """The deadline cut a call short: a submit that may have reached a provider
        without an idempotency key is interrupted (the user decides); any other job
        fails as "timeout", its remote id kept (a retry continues it, unpaid)."""
        job = await self.db(self.library.job, job_id)
        if job.state is JobState.SUBMITTING and not idempotent:
            return await self._interrupt(job)
        if job.state in (JobState.QUEUED, JobState.SUBMITTING):
            minutes = self.config.job_timeout / 60
            return await self._fail(
                job, f"the provider did not answer the submit within {minutes:.0f} min",
                ErrorKind.TIMEOUT)
        return await self._fail(job, self._timeout_message(job), ErrorKind.TIMEOUT)

    async def _step(self, job: Job, provider: AnyProvider) -> Job:
        state = job.state
        if state is JobState.QUEUED:
            await self._running.wait()
            try:
                request = await asyncio.to_thread(self._request, job)
            except InputError as exc:
                return await self._fail(job, exc.message, ErrorKind.of(exc.kind))
            job = await self._update(
                job, state=JobState.SUBMITTING, submit_attempts=job.submit_attempts + 1,
                note=None,
            )
            if is_sync(provider):
                return await self._generate(job, provider, request)
            return await self._submit(job, cast(Provider, provider), request)
        if is_sync(provider):
            if state is JobState.SUBMITTING:
                digests = await self.db(self._kept_digests, job)
                if digests:  # answered and kept; only the record of it was lost
                    return await self._update(
                        job, state=JobState.DOWNLOADING, progress=100.0, note=None,
                        result_urls=answer_markers(digests))
                return await self._interrupt(job)  # caught mid-call: never re-billed silently
            return await self._store_answer(job)
        remote = cast(Provider, provider)  # submit, then poll
        if state is JobState.SUBMITTING:
            if not remote.idempotent_submit:
                return await self._interrupt(job)
            try:
                request = await asyncio.to_thread(self._request, job)
            except InputError as exc:
                return await self._fail(job, exc.message, ErrorKind.of(exc.kind))
            return await self._submit(job, remote, request)
        if state in (JobState.SUBMITTED, JobState.RUNNING):
            return await self._poll(job, remote)
        if state is JobState.DOWNLOADING:
            return await self._download(job, remote)
        raise AssertionError(f"no step for state {state}")

    def _request(self, job: Job) -> GenerationRequest:
        return build_request(self.library, job, self._keep_metadata)

    async def _interrupt(self, job: Job) -> Job:
        label = PROVIDERS[job.provider].label
        return await self._update(
            job, state=JobState.INTERRUPTED, error=INTERRUPTED_MESSAGE.format(label=label),
            error_kind=ErrorKind.UNANSWERED, finished_at=time.time(), note=None,
        )

    async def _wait_out(self, job: Job, exc: ApiError, attempt: int,
                        note: str | None = None, **fields: Any) -> Job:
        """Note why we wait (``fields`` written with it), then back off (capped, and never
        past the job's deadline); raise ``exc`` when the deadline has passed."""
        left = self._time_left(job.id)
        if left <= 0:
            raise exc
        delay = self.config.retry.delay(min(attempt, 10), getattr(exc, "retry_after", None))
        delay = min(max(delay, 0.05), self.config.wait_cap, left)
        job = await self._update(
            job, note=note or f"waiting for the provider: {exc.message}", **fields)
        await self.config.retry.sleep(delay)
        return job

    async def _submit(self, job: Job, provider: Provider, request: GenerationRequest) -> Job:
        async def record(job: Job, result: SubmitResult) -> Job:
            return await self._update(
                job, state=JobState.SUBMITTED, remote_id=result.remote_id,
                submitted_at=time.time(), note=None,
            )

        return await self._until_answered(
            job, partial(provider.submit, request, job.idem_key), record,
            idempotent=provider.idempotent_submit)

    async def _generate(self, job: Job, provider: SyncProvider, request: GenerationRequest
                        ) -> Job:
        """One synchronous call (retried only while provably not taken on); the answer's
        images are written to disk before anything else happens."""
        return await self._until_answered(
            job, partial(provider.generate, request), self._keep_answer, idempotent=False)

    async def _until_answered(
        self, job: Job, call: Callable[[], Awaitable[T]],
        record: Callable[[Job, T], Awaitable[Job]], *, idempotent: bool,
    ) -> Job:
        """Send a paid request (a submit, a synchronous generate) until it is answered,
        and ``record`` the answer (its remote id, or its images kept): the job after.

        A request that may have reached a provider without an idempotency key is never
        repeated (the job is interrupted); while it is on the wire, and until its answer
        is recorded, ``stop()`` lets it land rather than lose what the provider bills.
        One that was provably not taken on puts the job back in ``queued`` (persisted
        before waiting): with OFFLINE_NOTE when it never left the machine, so a restart
        finds it queued (not interrupted) and sends it then; at the job's deadline it
        fails as "offline" (a retry is its first payment).
        """
        attempt = 0
        while True:
            try:
                with self._landing(job.id, unsafe=not idempotent):
                    grace = 0.0 if idempotent else self.config.landing_grace
                    answer = await self._within(job.id, call(), grace)
                    failpoint("submit.sent")
                    return await record(job, answer)
            except _OutOfTime:
                return await self._out_of_time(job.id, idempotent)
            except UnansweredSubmitError:
                return await self._interrupt(job)
            except TransientError as exc:
                if exc.sent and not idempotent:
                    return await self._interrupt(job)
                attempt += 1
                back = {} if exc.sent else {"state": JobState.QUEUED}
                try:
                    job = await self._wait_out(
                        job, exc, attempt, OFFLINE_NOTE if exc.offline else None, **back)
                    if self._time_left(job.id) <= 0:
                        raise exc  # not sent again just to be cut at once by the deadline
                except TransientError:
                    if exc.offline:
                        minutes = self.config.job_timeout / 60
                        # An idempotent provider's earlier attempt may have left before
                        # the network went: its retry keeps the key (retry_plan).
                        after = ("a retry resends it under the same idempotency key, never "
                                 "paid twice" if idempotent else "nothing was sent")
                        return await self._fail(
                            job, f"offline: the provider could not be reached within "
                            f"{minutes:.0f} min ({exc.message}); {after}", ErrorKind.OFFLINE)
                    return await self._fail(job, f"gave up: {exc.message}", ErrorKind.of(exc.kind))
                if job.state is JobState.QUEUED:
                    await self._running.wait()
                    # (offline, the note stays until an answer comes: the window says it
                    # steadily rather than flickering with each try)
                    job = await self._update(
                        job, state=JobState.SUBMITTING, submit_attempts=job.submit_attempts + 1,
                        note=job.note if exc.offline else None)
                continue
            except ApiError as exc:
                return await self._fail(job, exc.message, ErrorKind.of(exc.kind))

    @contextlib.contextmanager
    def _landing(self, job_id: str, *, unsafe: bool) -> Iterator[None]:
        """While a request without an idempotency key is on the wire, and its answer not
        yet recorded, ``stop()`` waits for it (up to ``stop_grace``)."""
        if not unsafe:
            yield
            return
        landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsafe_submits[job_id] = landed
        try:
            yield
        finally:
            landed.set_result(None)
            self._unsafe_submits.pop(job_id, None)

    async def _poll_once(
        self, job: Job, provider: Provider
    ) -> tuple[Job, PollResult | None]:
        """One poll (within the job's deadline) with the waiting policy; (job, None) means
        "try again later"."""
        assert job.remote_id is not None
        try:
            result = await self._within(job.id, provider.poll(job.remote_id))
        except (TransientError, ProtocolError) as exc:
            count = self._poll_errors.get(job.id, 0) + 1
            self._poll_errors[job.id] = count
            if isinstance(exc, ProtocolError) and count > self.config.max_protocol_errors:
                raise
            job = await self._wait_out(job, exc, count)
            return job, None
        self._poll_errors.pop(job.id, None)
        return job, result

    async def _poll(self, job: Job, provider: Provider) -> Job:
        started = time.monotonic()
        while True:
            try:
                job, result = await self._poll_once(job, provider)
            except ApiError as exc:
                if self._time_left(job.id) <= 0:
                    return await self._fail(job, self._timeout_message(job), ErrorKind.TIMEOUT)
                return await self._fail(job, exc.message, ErrorKind.of(exc.kind))
            if result is not None:
                if result.state is RemoteState.COMPLETED:
                    too_many = self._too_many_images(job, result.urls)
                    if too_many:
                        return await self._fail(job, too_many, ErrorKind.PROTOCOL)
                    return await self._update(
                        job, state=JobState.DOWNLOADING, result_urls=result.urls,
                        cost=result.cost, progress=100.0, note=None,
                    )
                if result.state is RemoteState.FAILED:
                    return await self._update(
                        job, state=JobState.FAILED, error=result.error,
                        error_kind=ErrorKind.PROVIDER_FAILED, cost=result.cost,
                        finished_at=time.time(), note=None,
                    )
                state = JobState.RUNNING if result.state is RemoteState.RUNNING else job.state
                if (state, result.progress) != (job.state, job.progress) or job.note:
                    job = await self._update(job, state=state, progress=result.progress, note=None)
            left = self._time_left(job.id)
            if left <= 0:
                return await self._fail(job, self._timeout_message(job), ErrorKind.TIMEOUT)
            elapsed = time.monotonic() - started
            factor = self.config.slow_factor if elapsed > self.config.slow_after else 1.0
            await self._until_next_poll(job, factor)
            fresh = await self.db(self.library.job, job.id)
            if fresh.cancel_requested:
                return fresh
            if fresh.lease_owner != self.owner:
                raise LeaseLost(job.id)

    async def _until_next_poll(self, job: Job, factor: float) -> None:
        """Wait a poll interval (times ``factor``), never past the job's deadline; the
        interval and the deadline are read again whenever the settings change."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            changed = self._config_changed
            interval = self.config.poll_interval or PROVIDERS[job.provider].poll_interval
            wait = min(since + interval * factor - loop.time(), self._time_left(job.id))
            if wait <= 0:
                return
            try:
                async with asyncio.timeout(wait):
                    await changed.wait()
            except TimeoutError:
                return

    @staticmethod
    def _too_many_images(job: Job, urls: Sequence[str]) -> str | None:
        """Why a result listing is refused (more images than the model makes for one
        request: nothing of it is stored), or None."""
        try:
            most = PROVIDERS[job.provider].model(job.model).max_images
        except KeyError:
            return None
        if len(urls) <= most:
            return None
        return (f"the provider's answer lists {len(urls)} images for one request, more than "
                f"the {most} this model makes; none was stored (remote id {job.remote_id})")

    def _timeout_message(self, job: Job) -> str:
        minutes = self.config.job_timeout / 60
        return (f"the provider did not finish the job within {minutes:.0f} min "
                f"(remote id {job.remote_id})")

    async def _download(self, job: Job, provider: Provider) -> Job:
        urls = job.result_urls
        if not urls:
            # Resumed after a crash, or retried: ask the provider for fresh URLs.
            result: PollResult | None = None
            while result is None:
                try:
                    job, result = await self._poll_once(job, provider)
                except ApiError as exc:
                    return await self._fail(job, exc.message, ErrorKind.DOWNLOAD)
            if result.state is RemoteState.FAILED:
                return await self._fail(
                    job, result.error or "the provider reports the job as failed",
                    ErrorKind.PROVIDER_FAILED,
                )
            if result.state is not RemoteState.COMPLETED:
                return await self._update(job, state=JobState.RUNNING, progress=result.progress)
            urls = result.urls
            too_many = self._too_many_images(job, urls)
            if too_many:
                return await self._fail(job, too_many, ErrorKind.PROTOCOL)
            job = await self._update(job, result_urls=urls, cost=result.cost or job.cost)
        stored: list[StoredImage] = []
        max_bytes = PROVIDERS[job.provider].max_download_bytes
        for idx, url in enumerate(urls):
            attempt = 0  # transient network failures
            unusable = 0  # bodies that arrived whole but do not decode
            while True:
                tmp = self.library.tmp_path(job.id, idx)
                try:
                    # Bounded by the job's deadline: a slow image does not hold the slot.
                    info, got = await self._within(job.id, fetch_image(
                        self.connector.http, url, tmp, max_bytes, origin=provider.base_url))
                    image = await self.db(
                        self.library.place_image, job, idx, tmp, sha256=got.sha256,
                        size=got.size, width=info.width, height=info.height,
                        fmt=info.format, ext=info.ext,
                    )
                    stored.append(image)
                    break
                except TransientError as exc:
                    attempt += 1
                    if attempt >= self.config.max_download_attempts:
                        return await self._fail(
                            job, f"download failed: {exc.message}", ErrorKind.DOWNLOAD)
                    try:
                        job = await self._wait_out(job, exc, attempt)
                    except TransientError:
                        return await self._fail(job, self._timeout_message(job), ErrorKind.TIMEOUT)
                except ImageCheckError as exc:
                    await asyncio.to_thread(tmp.unlink, missing_ok=True)
                    unusable += 1
                    if unusable >= 3:
                        return await self._fail(
                            job, f"the provider's file is not a usable image: {exc}",
                            ErrorKind.DOWNLOAD,
                        )
                except ApiError as exc:
                    return await self._fail(job, exc.message, ErrorKind.DOWNLOAD)
                except OSError as exc:
                    await asyncio.to_thread(tmp.unlink, missing_ok=True)
                    return await self._storage_failed(job, exc)
        return await self._complete(job, stored)
