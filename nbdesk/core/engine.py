"""The job engine: a crash-safe state machine over the library's jobs table.

Every transition is written to the database before the side effect it guards:

    queued -> submitting -> submitted -> running -> downloading -> completed
                                                         \\-> failed | cancelled
    (interrupted: a non-idempotent submit whose answer was lost; waits for the user)

A job is worked by one process at a time (a lease in the database). After a crash,
``resume`` polls submitted jobs (never resubmits them), resends a job caught in
``submitting`` with the same idempotency key where the provider has one, and marks it
interrupted otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from nbdesk.api.base import (
    Answer,
    AnyProvider,
    ApiError,
    GenerationRequest,
    InputError,
    Part,
    PollResult,
    ProtocolError,
    Provider,
    Reference,
    RemoteState,
    SubmitResult,
    SyncProvider,
    TransientError,
    Turn,
    UnansweredSubmitError,
    is_sync,
)
from nbdesk.api.capabilities import PROVIDERS
from nbdesk.api.http import Download, RetryPolicy, download_to
from nbdesk.api.http import deadline as http_deadline  # (engine has its own _deadline)
from nbdesk.api.images import (
    ImageCheckError,
    ImageInfo,
    PngStreamCheck,
    prepare_reference,
    probe_file,
)
from nbdesk.api.refs import fetch_reference
from nbdesk.api.validate import validate_request
from nbdesk.core import answers
from nbdesk.core.connector import ConfigError, Connector
from nbdesk.core.failpoints import failpoint
from nbdesk.core.jobs import (
    MAX_COUNT,
    OFFLINE_NOTE,
    RETRYABLE,
    ErrorKind,
    Job,
    JobSpec,
    JobState,
    RetryPlan,
    retry_plan,
)
from nbdesk.core.library import (
    Item,
    LeaseLost,
    Library,
    StoredImage,
    make_owner,
    sha256_file,
    sha256_hex,
)
from nbdesk.core.paths import write_synced
from nbdesk.core.refs import RefRecord
from nbdesk.core.secrets import scrub
from nbdesk.core.settings import Settings
from nbdesk.core.slots import Slots

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A reference checked before a job is written: (source, "file" | "url", bytes, info);
#: bytes and info are None for a URL until it is fetched.
_CheckedRef = tuple[str, str, bytes | None, ImageInfo | None]

INTERRUPTED_MESSAGE = (
    "the submit may or may not have reached {label} (the app stopped or the connection "
    "broke before the answer); {label} has no idempotency key, so it was not sent again. "
    "Retry sends it again — a new paid submission."
)


#: How long stop() waits for the start's reading of every provider's key to end.
KEYS_GRACE = 5.0

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


@dataclass
class EngineConfig:
    """The engine's tuning. ``concurrency``, ``poll_interval`` and ``job_timeout`` follow
    the user's settings while the engine runs (``Engine._on_settings``)."""

    concurrency: int = 4  # per provider
    poll_interval: float | None = None  # None: the provider's documented interval
    slow_after: float = 60.0  # poll less often after this long
    slow_factor: float = 2.0
    job_timeout: float = 900.0  # give up waiting on the provider after this long
    lease_ttl: float = 30.0
    scan_interval: float = 2.0
    take_over: bool = True  # claim active jobs found in the database (app, `resume`)
    max_download_attempts: int = 8
    max_protocol_errors: int = 10
    wait_cap: float = 30.0  # longest pause between tries while a provider is down
    blocked_retry: float = 60.0  # a paid job whose key is missing is tried again after this
    stop_grace: float = 30.0  # how long stop() lets a non-idempotent submit finish
    # how long past the job's deadline a paid request without an idempotency key may run
    # before it is cut (and the job interrupted): one still only trying to connect (the
    # provider's own retries of a refused connection) ends by itself meanwhile, and the
    # job fails as "offline" instead of "maybe billed"
    landing_grace: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


Listener = Callable[[Job], None]


class Engine:
    def __init__(
        self, library: Library, connector: Connector, config: EngineConfig | None = None
    ) -> None:
        self.library = library
        self.connector = connector
        self.config = config or EngineConfig()
        self.owner = make_owner()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelling: set[str] = set()
        self._slots: dict[str, Slots] = {}  # per provider: how many jobs run at once
        # set (and replaced) when a setting the engine follows changed: a poll waiting
        # for its turn measures its wait again
        self._config_changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._unsubscribe = connector.settings_service.subscribe(self._on_settings)
        self._listeners: list[Listener] = []
        self._external: list[Callable[[], None]] = []
        self._running = asyncio.Event()
        self._running.set()
        self._bg: list[asyncio.Task[None]] = []
        self._learning: asyncio.Task[None] | None = None  # every provider's key, read once
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="nbdesk-db")
        self._stopped = False
        self._poll_errors: dict[str, int] = {}
        self._blocked: dict[str, float] = {}  # job id -> when to try again (no key yet)
        # submits without an idempotency key now on the wire: stop() lets them land
        self._unsafe_submits: dict[str, asyncio.Future[None]] = {}
        # job id -> its deadline (the loop's clock): job_timeout from when this process
        # took the job up (enqueued, resumed or retried); it bounds every step of it
        self._deadlines: dict[str, float] = {}
        # job id -> a paid answer's images that neither the library nor the fallback
        # folder could take: held for a retry in this process
        self._held: dict[str, list[bytes]] = {}

    # ------------------------------------------------------------------ plumbing

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a library call on the one database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, partial(fn, *args, **kwargs))

    def subscribe(self, listener: Listener) -> None:
        """``listener(job)`` runs on the event loop after every persisted change."""
        self._listeners.append(listener)

    def on_external_change(self, callback: Callable[[], None]) -> None:
        """Called when another process changed the database (its jobs, its images)."""
        self._external.append(callback)

    def _emit(self, job: Job) -> None:
        for listener in list(self._listeners):
            try:
                listener(job)
            except Exception:
                log.exception("job listener failed")

    async def _update(self, job: Job, **fields: Any) -> Job:
        # The one place a job's texts are written: whatever a provider said (a key it
        # repeated back included) is stored and shown only with every known key masked.
        for name in ("error", "note"):
            if fields.get(name):
                fields[name] = scrub(fields[name])
        job = await self.db(self.library.update_job, job.id, self.owner, **fields)
        self._emit(job)
        return job

    def slots(self, provider: str) -> Slots:
        """The places of ``provider``'s jobs running at once (``config.concurrency``)."""
        if provider not in self._slots:
            self._slots[provider] = Slots(max(1, self.config.concurrency))
        return self._slots[provider]

    def _on_settings(self, old: Settings, new: Settings) -> None:
        """The user changed the settings (on whichever thread saved them): the engine
        applies them on its loop's thread."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop is here:
            self._apply_settings(old, new)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._apply_settings, old, new)

    def _apply_settings(self, old: Settings, new: Settings) -> None:
        """At once: running queues grow or shrink their slots, a waiting poll measures
        its wait again, and a job's deadline moves by the change of the timeout (a call
        under way keeps the cut it started with)."""
        config = self.config
        if new.concurrency != old.concurrency:
            config.concurrency = new.concurrency
            for slots in self._slots.values():
                slots.limit = max(1, new.concurrency)
        if new.poll_interval != old.poll_interval:
            config.poll_interval = new.poll_interval
        if new.job_timeout != old.job_timeout:
            moved, config.job_timeout = new.job_timeout - config.job_timeout, new.job_timeout
            for job_id in self._deadlines:
                self._deadlines[job_id] += moved
        changed, self._config_changed = self._config_changed, asyncio.Event()
        changed.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """Hold queued jobs (jobs already at the provider carry on)."""
        self._running.clear()

    def unpause(self) -> None:
        self._running.set()

    def unblock(self) -> None:
        """A key or base URL changed: jobs waiting for one are tried again at once."""
        self._blocked.clear()

    def busy(self) -> list[str]:
        return list(self._tasks)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, resume: bool = True) -> list[str]:
        """Start background work; with ``resume`` take up every unfinished job."""
        self._loop = asyncio.get_running_loop()
        await self.db(self.library.sweep_tmp)
        resumed = await self.resume_all() if resume else []
        self._bg.append(asyncio.create_task(self._heartbeat_loop(), name="nbdesk-heartbeat"))
        # Every provider's keychain key known for masking, not only the ones used here.
        self._learning = asyncio.create_task(self.connector.learn_keys(), name="nbdesk-keys")
        self._bg.append(self._learning)
        if self.config.take_over:
            self._bg.append(asyncio.create_task(self._scan_loop(), name="nbdesk-scan"))
        return resumed

    async def resume_all(self) -> list[str]:
        ids = await self.db(self.library.claimable, self.owner)
        now = time.monotonic()
        started = [i for i in ids if i not in self._tasks and self._blocked.get(i, 0) <= now]
        for job_id in started:
            self._spawn(job_id)
        return started

    async def stop(self) -> None:
        """Stop working; unfinished jobs keep their persisted state for the next start."""
        if self._stopped:
            return
        self._stopped = True
        self._unsubscribe()
        landing = [f for f in self._unsafe_submits.values() if not f.done()]
        if landing:
            # Cancelling these would lose an answer the provider bills anyway (APIFree
            # has no idempotency key): let them finish and record their remote ids.
            log.info("waiting for %d submit(s) in flight before stopping", len(landing))
            await asyncio.wait(landing, timeout=self.config.stop_grace)
        if self._learning is not None and not self._learning.done():
            # Its keychain calls run on threads of their own: let them end (a few ms, or
            # the keychain's own time limit) rather than leave one running as the
            # process exits, which can abort the interpreter's shutdown.
            await asyncio.wait([self._learning], timeout=KEYS_GRACE)
        tasks = [*self._bg, *self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._bg.clear()
        try:
            await self.db(self.library.release, self.owner)
        finally:
            self._db_pool.shutdown(wait=True)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl / 3)
            try:
                await self.db(self.library.heartbeat, self.owner, self.config.lease_ttl)
            except Exception:
                log.exception("lease heartbeat failed")

    async def _scan_loop(self) -> None:
        seen = await self.db(self.library.data_version)
        while True:
            await asyncio.sleep(self.config.scan_interval)
            try:
                version = await self.db(self.library.data_version)
                if version != seen:
                    seen = version
                    for callback in list(self._external):
                        callback()
                await self.resume_all()
            except Exception:
                log.exception("scanning the library for jobs failed")

    # ------------------------------------------------------------------ user actions

    def check(self, spec: JobSpec) -> None:
        """Validate a spec against the capability table; raises InputError."""
        caps = PROVIDERS.get(spec.provider)
        if caps is None:
            raise InputError(f"unknown provider {spec.provider!r}")
        p = spec.params
        validate_request(caps, GenerationRequest(
            model=spec.model, prompt=spec.prompt, aspect_ratio=p.aspect_ratio,
            resolution=p.resolution, output_format=p.output_format,
            google_search=p.google_search, image_search=p.image_search, cache_key=p.cache_key,
            references=[Reference(s) for s in spec.refs], with_text=p.with_text,
        ))

    async def enqueue(self, spec: JobSpec, count: int = 1) -> list[Job]:
        """Check everything, copy the references in, write ``count`` jobs, start them.

        Raises InputError or ConfigError before anything is written or sent.
        """
        if count < 1:
            raise InputError("the number of images must be at least 1")
        if count > MAX_COUNT:
            raise InputError(f"at most {MAX_COUNT} images can be asked for at once "
                             f"(one paid job each); {count} were asked for")
        self.check(spec)
        if spec.parent_item is not None:
            try:
                await self.db(self.library.item, spec.parent_item)
            except KeyError:
                raise InputError(
                    f"there is no image #{spec.parent_item} in the library to edit") from None
        await self.connector.provider(spec.provider, spec.demo)  # a key, a valid base URL
        # Every reference is checked before any is copied: a refused one leaves nothing.
        keep = self._keep_metadata
        checked = await asyncio.to_thread(self._check_refs, spec.refs, keep)
        for n, (source, kind, data, info) in enumerate(checked):
            if data is None or info is None:
                # A URL: fetched and verified now rather than failing at the provider.
                data, info = await fetch_reference(self.connector.http, source,
                                                   keep_metadata=keep)
                checked[n] = (source, kind, data, info)
        refs = await asyncio.to_thread(self._import_refs, checked)
        jobs = await self.db(
            self.library.add_jobs, spec, refs, count, self.owner, self.config.lease_ttl
        )
        for job in jobs:
            self._emit(job)
            self._spawn(job.id)
        return jobs

    @property
    def _keep_metadata(self) -> bool:
        """Whether references keep their EXIF/XMP (GPS, camera): the user's setting."""
        return self.connector.settings.keep_reference_metadata

    @staticmethod
    def _check_refs(sources: Sequence[str], keep_metadata: bool) -> list[_CheckedRef]:
        """Every reference checked (InputError for the first one refused): (source, kind,
        the file's bytes, without their metadata unless ``keep_metadata``, and info), or
        (url, "url", None, None) for a URL."""
        checked: list[_CheckedRef] = []
        for source in sources:
            _ref, data, info = prepare_reference(source, keep_metadata=keep_metadata)
            checked.append((source, "url" if data is None else "file", data, info))
        return checked

    def _import_refs(self, checked: Sequence[_CheckedRef]) -> list[RefRecord]:
        """Copy the checked references into the library; a URL's fetched bytes too (it
        is still sent as the URL: the copy keeps the reference beside the image)."""
        records = []
        for source, kind, data, info in checked:
            if data is None or info is None:
                raise ValueError(f"reference {source!r} was not fetched")
            rel, digest = self.library.import_ref(data, info.ext)
            records.append(RefRecord(
                source=source, kind=kind, path=rel, sha256=digest,
                width=info.width, height=info.height, mime=info.mime,
            ))
        return records

    async def cancel(self, job_id: str) -> Job:
        task = self._tasks.get(job_id)
        if task is not None:
            self._cancelling.add(job_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._cancelling.discard(job_id)
        job = await self.db(self.library.job, job_id)
        if job.state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
            return job
        claimed = await self.db(self.library.claim, job_id, self.owner, self.config.lease_ttl)
        if claimed is None:
            # Another live process works it: ask it to stop at its next step.
            job = await self.db(self.library.update_job, job_id, None, cancel_requested=True)
            self._emit(job)
            return job
        await self.db(self.library.clear_tmp, job_id)
        if not (PROVIDERS[claimed.provider].synchronous and claimed.result_urls):
            await self.db(self.library.clear_answer, job_id)
            await self.db(self.library.remove_unrecorded_images, claimed)
        # (else a synchronous answer arrived: it is paid, so it is kept, placed or not,
        # and a retry stores it without a new call)
        job = await self._mark_cancelled(claimed)
        await self.db(self.library.release, self.owner, job_id)
        return job

    async def _mark_cancelled(self, job: Job) -> Job:
        note = None
        if job.state not in (JobState.QUEUED, JobState.INTERRUPTED):
            note = "cancelled after it was sent: the provider may still bill it"
        return await self._update(
            job, state=JobState.CANCELLED, finished_at=time.time(), note=note,
            cancel_requested=False,
        )

    async def retry(self, job_id: str, *, resubmit_ok: bool = False) -> Job:
        """Run a failed, interrupted or cancelled job again, as ``retry_plan`` says.

        A job the provider has (a remote id), or whose paid answer is kept on disk, is
        continued: polled with fresh links and downloaded, or stored; nothing is paid
        twice, whatever it failed of. Only a job that never reached the provider, or one
        the provider may have billed without our knowing its id (interrupted), is sent
        again; ``retry_plan(job).paid`` tells a caller so before it asks. A RESUBMIT
        (maybe a second payment) is refused unless the caller says the user agreed
        (``resubmit_ok``), so that a job changed since the question is never paid unasked.
        """
        job = await self.db(self.library.job, job_id)
        if job.state not in RETRYABLE:
            raise InputError(f"job {job_id[:8]} is {job.state.value}; only failed, "
                             "interrupted or cancelled jobs can be retried")
        caps = PROVIDERS[job.provider]
        # A synchronous answer kept here is stored, whatever the record says (it may have
        # failed before the answer's digests were written): never deleted, never re-paid.
        kept = await self.db(self._kept_answer, job) if caps.synchronous else ()
        if (not kept and self.retry_plan(job) is RetryPlan.RESUBMIT
                and not (resubmit_ok or job.demo)):
            # The caller asked the user about another plan (the job changed since, or it
            # never asked): a maybe-second payment is never made unasked.
            raise InputError(f"job {job_id[:8]} may already have been billed: its retry is "
                             "a new paid submission, which was not agreed to (not retried)")
        claimed = await self.db(self.library.claim, job_id, self.owner, self.config.lease_ttl)
        if claimed is None:
            raise InputError(f"job {job_id[:8]} is being worked by another nbdesk process")
        common: dict[str, Any] = dict(
            error=None, error_kind=None, note=None, finished_at=None, cancel_requested=False
        )
        if caps.synchronous:
            kept = await self.db(self._kept_answer, claimed)
        plan = RetryPlan.CONTINUE if kept else self.retry_plan(claimed)
        if plan is RetryPlan.RESUBMIT and not (resubmit_ok or job.demo):  # changed meanwhile
            await self.db(self.library.release, self.owner, job_id)
            raise InputError(f"job {job_id[:8]} may already have been billed: its retry is "
                             "a new paid submission, which was not agreed to (not retried)")
        if plan is RetryPlan.CONTINUE and caps.synchronous:
            if kept:
                job = await self._update(claimed, state=JobState.DOWNLOADING,
                                         result_urls=kept, **common)
            else:
                failed = await self._fail(
                    claimed, "the image of the answer was lost before it was stored; "
                    "Retry makes a new paid call", ErrorKind.LOST)
                await self.db(self.library.release, self.owner, job_id)
                return failed
        elif plan is RetryPlan.CONTINUE:
            # Paid already: ask the provider again (fresh links; the old may be dead).
            job = await self._update(claimed, state=JobState.SUBMITTED, result_urls=(),
                                     **common)
        else:
            # The same idempotency key where the provider dedups by it and the submit may
            # have reached it: the provider then finds its own job instead of billing.
            keep_key = (plan is RetryPlan.SUBMIT and caps.idempotent_submit
                        and claimed.submit_attempts > 0)
            await self.db(self.library.clear_answer, job_id)
            job = await self._update(
                claimed, state=JobState.QUEUED,
                idem_key=claimed.idem_key if keep_key else str(uuid.uuid4()), remote_id=None,
                result_urls=(), progress=None, cost=None, submitted_at=None, turn=(),
                **common,
            )
        self._spawn(job.id)
        return job

    @staticmethod
    def retry_plan(job: Job) -> RetryPlan:
        """What a retry of ``job`` would do (and whether it costs money)."""
        caps = PROVIDERS[job.provider]
        return retry_plan(job, synchronous=caps.synchronous, idempotent=caps.idempotent_submit)

    async def remove(self, job_id: str) -> None:
        """Forget a finished job; its images stay in the library."""
        await self.db(self.library.remove_job, job_id)

    async def wait(self, job_ids: Iterable[str]) -> list[Job]:
        """Wait until none of these jobs is being worked here; return their records."""
        ids = list(job_ids)
        while True:
            pending = [self._tasks[i] for i in ids if i in self._tasks]
            if not pending:
                break
            await asyncio.gather(*pending, return_exceptions=True)
        return [await self.db(self.library.job, i) for i in ids]

    # ------------------------------------------------------------------ the worker

    def _spawn(self, job_id: str) -> None:
        if job_id in self._tasks or self._stopped:
            return
        self._tasks[job_id] = asyncio.create_task(self._run(job_id), name=f"job-{job_id[:8]}")

    async def _run(self, job_id: str) -> None:
        try:
            job = await self.db(self.library.claim, job_id, self.owner, self.config.lease_ttl)
            if job is None or not job.state.active:
                return
            await self.db(self.library.clear_tmp, job_id)
            self._deadlines[job_id] = asyncio.get_running_loop().time() + self.config.job_timeout
            if (job.state is JobState.DOWNLOADING and job.result_urls
                    and not PROVIDERS[job.provider].synchronous):
                # Links from an earlier run may have expired (or, in Demo, pointed at a
                # simulator that died with it): ask the provider for fresh ones.
                job = await self._update(job, result_urls=())
            async with self.slots(job.provider):
                try:
                    provider = await self.connector.provider(job.provider, job.demo)
                except ConfigError as exc:
                    if job.state is JobState.QUEUED:
                        await self._fail(job, str(exc), ErrorKind.CONFIG)  # nothing sent or paid
                    else:
                        # Sent (maybe paid) already: keep its state; it goes on once the
                        # key is back, polled, never resubmitted.
                        await self._update(job, note=f"waiting for a key: {exc}")
                        self._blocked[job_id] = time.monotonic() + self.config.blocked_retry
                    return
                while job.state.active:
                    if job.cancel_requested:
                        await self._mark_cancelled(job)
                        return
                    try:
                        job = await self._step(job, provider)
                    except _OutOfTime:
                        job = await self._out_of_time(job_id, provider.idempotent_submit)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            log.info("job %s was taken over by another process", job_id[:8])
        except Exception as exc:
            if self._stopped:
                # Shutting down: whatever broke, the job keeps its persisted state and
                # the next start resumes it. Never fail a (maybe paid) job for that.
                log.warning("job %s interrupted by shutdown: %r", job_id[:8], exc)
                return
            log.exception("job %s failed with an internal error", job_id[:8])
            with contextlib.suppress(Exception):
                # (_fail keeps the remote id: a retry then continues the job, never pays)
                job = await self.db(self.library.job, job_id)
                await self._fail(job, f"internal error: {type(exc).__name__}: {exc}",
                                 ErrorKind.INTERNAL)
        finally:
            self._tasks.pop(job_id, None)
            self._deadlines.pop(job_id, None)
            if not self._stopped and job_id not in self._cancelling:
                with contextlib.suppress(Exception):
                    await self.db(self.library.release, self.owner, job_id)

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

    async def _fail(self, job: Job, message: str, kind: ErrorKind) -> Job:
        return await self._update(
            job, state=JobState.FAILED, error=message, error_kind=kind, note=None,
            finished_at=time.time(),
        )

    async def _step(self, job: Job, provider: AnyProvider) -> Job:
        state = job.state
        if state is JobState.QUEUED:
            await self._running.wait()
            try:
                request = await asyncio.to_thread(self._request, job)
            except InputError as exc:
                return await self._fail(job, exc.message, ErrorKind(exc.kind))
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
                        result_urls=tuple(f"answer:{n}:{d}" for n, d in enumerate(digests)))
                return await self._interrupt(job)  # caught mid-call: never re-billed silently
            return await self._store_answer(job)
        remote = cast(Provider, provider)  # submit, then poll
        if state is JobState.SUBMITTING:
            if not remote.idempotent_submit:
                return await self._interrupt(job)
            try:
                request = await asyncio.to_thread(self._request, job)
            except InputError as exc:
                return await self._fail(job, exc.message, ErrorKind(exc.kind))
            return await self._submit(job, remote, request)
        if state in (JobState.SUBMITTED, JobState.RUNNING):
            return await self._poll(job, remote)
        if state is JobState.DOWNLOADING:
            return await self._download(job, remote)
        raise AssertionError(f"no step for state {state}")

    def _request(self, job: Job) -> GenerationRequest:
        refs: list[Reference] = []
        keep = self._keep_metadata  # (a copy made before stripping existed has its EXIF)
        for ref in job.refs:
            if ref.kind == "file" and ref.path:
                path = self.library.ref_file(ref.path)  # (UnsafePath: the job fails)
                if not path.is_file():
                    raise InputError(f"the library's copy of reference {ref.source} is missing")
                refs.append(prepare_reference(str(path), keep_metadata=keep)[0])
            else:
                refs.append(Reference(ref.source))
        history, parent_sha = self._history(job)
        if parent_sha is not None:
            # The edited image is in the model's turn of the history: not sent twice.
            refs = [r for r, rec in zip(refs, job.refs, strict=True)
                    if rec.sha256 != parent_sha]
        p = job.params
        return GenerationRequest(
            model=job.model, prompt=job.prompt, aspect_ratio=p.aspect_ratio,
            resolution=p.resolution, output_format=p.output_format,
            google_search=p.google_search, image_search=p.image_search,
            cache_key=p.cache_key, references=refs, with_text=p.with_text, history=history,
        )

    def _history(self, job: Job) -> tuple[list[Turn], str | None]:
        """The conversation an edit continues: the parent image and its ancestors made by
        the same provider, each as (its prompt and references, the model's answer with its
        thought signatures), oldest first. Also the parent image's SHA-256 (None: no
        history; the parent image, if any, goes as a plain reference)."""
        if job.parent_item is None or job.demo:
            return [], None
        try:
            model = PROVIDERS[job.provider].model(job.model)
        except KeyError:
            return [], None
        if not model.history_turns:
            return [], None
        chain = self.library.chain(job.parent_item, model.history_turns)
        # Only the newest stretch made by this provider, with files still in place.
        usable: list[Item] = []
        for item in reversed(chain):
            if item.provider != job.provider or item.demo or item.deleted_at is not None:
                break
            usable.append(item)
        usable.reverse()
        if not usable:
            return [], None
        turns: list[Turn] = []
        previous_sha: str | None = None
        for item in usable:
            user = [Part(text=item.prompt)]
            for rec in item.refs:
                if rec.kind == "file" and rec.path and rec.sha256 != previous_sha:
                    path = self.library.ref_file(rec.path)
                    if path.is_file():
                        user.append(Part(image=prepare_reference(
                            str(path), keep_metadata=self._keep_metadata)[0]))
            if not item.path.is_file():
                raise InputError(f"image #{item.id} of the edit chain is missing its file")
            image = prepare_reference(str(item.path))[0]
            answer: list[Part] = []
            for part in item.turn:
                sig = part.get("sig")
                if "text" in part:
                    answer.append(Part(text=str(part["text"]), signature=sig))
                elif part.get("image") == item.idx:
                    answer.append(Part(image=image, signature=sig))
            if not any(p.image is not None for p in answer):
                answer.append(Part(image=image))
            turns += [Turn("user", tuple(user)), Turn("model", tuple(answer))]
            previous_sha = item.sha256
        return turns, usable[-1].sha256

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
                    return await self._fail(job, f"gave up: {exc.message}", ErrorKind(exc.kind))
                if job.state is JobState.QUEUED:
                    await self._running.wait()
                    # (offline, the note stays until an answer comes: the window says it
                    # steadily rather than flickering with each try)
                    job = await self._update(
                        job, state=JobState.SUBMITTING, submit_attempts=job.submit_attempts + 1,
                        note=job.note if exc.offline else None)
                continue
            except ApiError as exc:
                return await self._fail(job, exc.message, ErrorKind(exc.kind))

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

    async def _keep_answer(self, job: Job, answer: Answer) -> Job:
        """The paid answer's images kept before anything else: in the library's temp
        folder, else the fallback folder (``core.answers``), else in this process's
        memory; then the job is in ``downloading`` with the images' digests (a retry
        stores them, never calls again)."""
        images = [i.data for i in answer.images]
        try:
            # Shielded: once the answer is here, a cancel or stop must not lose it.
            digests = await asyncio.shield(asyncio.to_thread(
                self.library.keep_answer, job.id, images))
        except OSError as exc:
            log.error("job %s: cannot keep the paid answer on disk (%s); held in memory",
                      job.id[:8], exc)
            self._held[job.id] = images
            digests = [sha256_hex(d) for d in images]
        turn: list[dict[str, Any]] = []
        for part in answer.turn:
            entry: dict[str, Any] = (
                {"image": part.image_index} if part.image_index is not None
                else {"text": part.text or ""}
            )
            if part.signature:
                entry["sig"] = part.signature
            turn.append(entry)
        return await self._update(
            job, state=JobState.DOWNLOADING, remote_id=answer.remote_id,
            result_urls=tuple(f"answer:{n}:{d}" for n, d in enumerate(digests)),
            turn=tuple(turn), cost=answer.cost, progress=100.0, submitted_at=time.time(),
            note=None,
        )

    def _kept_digests(self, job: Job) -> list[str]:
        """The digests of an answer kept on disk for a job caught in ``submitting`` (the
        process died, or the database refused, after the answer was kept): [] if none."""
        digests: list[str] = []
        for idx in range(PROVIDERS[job.provider].model(job.model).max_images):
            path = self.library.answer_path(job.id, idx)
            if path.is_file():
                digests.append(sha256_file(path))
            elif answers.kept(job.id, idx):
                digests.append((answers.place(job.id, idx) / "sha256").read_text().strip())
            else:
                break
        return digests

    def _kept_answer(self, job: Job) -> tuple[str, ...]:
        """The markers (``answer:n:sha256``) of a synchronous job's paid answer kept here
        (in the library's temp folder, the fallback folder or this process's memory, or
        placed already), whatever the job's record says; () if none is."""
        if job.result_urls and self._answer_kept(job):
            return job.result_urls
        digests = self._kept_digests(job) or [sha256_hex(d) for d in self._held.get(job.id, ())]
        return tuple(f"answer:{n}:{d}" for n, d in enumerate(digests))

    def _answer_kept(self, job: Job) -> bool:
        for n, marker in enumerate(job.result_urls):
            digest = marker.rpartition(":")[2]
            if (not self.library.answer_path(job.id, n).is_file()
                    and not answers.kept(job.id, n) and job.id not in self._held
                    and self.library.placed_file(job, n, digest) is None):
                return False
        return bool(job.result_urls)

    def _bring_back(self, job_id: str, idx: int, dest: Path) -> None:
        """A kept answer image back at ``dest`` (from the fallback folder or memory), if
        it is kept there; ``OSError`` if ``dest`` cannot be written."""
        if answers.restore(job_id, idx, dest):
            return
        held = self._held.get(job_id)
        if held is not None and idx < len(held):
            write_synced(dest, held[idx])

    async def _store_answer(self, job: Job) -> Job:
        """Place the images a synchronous answer brought (kept on disk) into the library."""
        stored: list[StoredImage] = []
        for idx, marker in enumerate(job.result_urls):
            digest = marker.rpartition(":")[2]
            src = self.library.answer_path(job.id, idx)
            try:
                if not await asyncio.to_thread(src.is_file):
                    await asyncio.to_thread(self._bring_back, job.id, idx, src)
                if await asyncio.to_thread(src.is_file):
                    info = await asyncio.to_thread(probe_file, src)
                    size = (await asyncio.to_thread(src.stat)).st_size
                    image = await self.db(
                        self.library.place_image, job, idx, src, sha256=digest, size=size,
                        width=info.width, height=info.height, fmt=info.format, ext=info.ext,
                    )
                else:
                    # Placed before a crash, its row not written: take it as it is.
                    placed = await self.db(self.library.placed_file, job, idx, digest)
                    if placed is None:
                        return await self._fail(
                            job, "the image of the answer was lost before it was stored; "
                            "Retry makes a new paid call", ErrorKind.LOST,
                        )
                    info = await asyncio.to_thread(probe_file, placed)
                    image = StoredImage(
                        idx, placed.relative_to(self.library.root).as_posix(), digest,
                        placed.stat().st_size, info.width, info.height, info.format,
                    )
                stored.append(image)
            except ImageCheckError as exc:
                await asyncio.to_thread(src.unlink, missing_ok=True)
                return await self._fail(
                    job, f"the provider's answer holds no usable image: {exc}", ErrorKind.BAD_IMAGE)
            except OSError as exc:
                return await self._storage_failed(job, exc)
        done = await self._complete(job, stored)
        if done.state is JobState.COMPLETED:
            self._held.pop(job.id, None)
            await asyncio.to_thread(answers.drop, job.id)
        return done

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
                return await self._fail(job, exc.message, ErrorKind(exc.kind))
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

    async def _storage_failed(self, job: Job, exc: OSError) -> Job:
        """The image could not be written: paid already, so a retry downloads again."""
        return await self._fail(
            job, f"cannot write to the library ({exc.strerror or exc}); free some space or "
            "fix the folder's permissions, then retry (no new payment)", ErrorKind.STORAGE)

    async def _complete(self, job: Job, stored: list[StoredImage]) -> Job:
        """Record the stored images and the job's completion in one transaction."""
        try:
            done = await self.db(self.library.complete_job, job, self.owner, stored, job.cost)
        except (OSError, sqlite3.OperationalError) as exc:
            return await self._fail(
                job, f"cannot write the library database: {exc}", ErrorKind.STORAGE)
        self._emit(done)
        return done
