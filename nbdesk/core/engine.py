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
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from nbdesk.api.base import InputError
from nbdesk.api.capabilities import PROVIDERS
from nbdesk.core.connector import ConfigError, Connector
from nbdesk.core.engine_base import EngineConfig, Listener
from nbdesk.core.intake import check_spec, import_references
from nbdesk.core.jobs import (
    MAX_COUNT,
    RETRYABLE,
    ErrorKind,
    Job,
    JobSpec,
    JobState,
    RetryPlan,
    retry_plan,
)
from nbdesk.core.library import LeaseLost, Library
from nbdesk.core.settings import Settings
from nbdesk.core.slots import Slots
from nbdesk.core.steps import INTERRUPTED_MESSAGE, JobSteps, _OutOfTime, fetch_image

__all__ = ["INTERRUPTED_MESSAGE", "KEYS_GRACE", "Engine", "EngineConfig", "Listener",
           "fetch_image"]

log = logging.getLogger(__name__)

#: How long stop() waits for the start's reading of every provider's key to end.
KEYS_GRACE = 5.0


class Engine(JobSteps):
    """The engine: schedules jobs (slots, leases, resume, stop, scans for other
    processes' jobs) and takes the user's actions (enqueue, cancel, retry). It is built
    on ``JobSteps`` (``core/steps.py``: one job's steps), ``SyncAnswers``
    (``core/sync_answer.py``: a synchronous paid answer) and ``EngineBase``
    (``core/engine_base.py``: the shared state and how a job's change is written)."""

    def __init__(
        self, library: Library, connector: Connector, config: EngineConfig | None = None
    ) -> None:
        super().__init__(library, connector, config)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelling: set[str] = set()
        self._slots: dict[str, Slots] = {}  # per provider: how many jobs run at once
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._external: list[Callable[[], None]] = []
        self._bg: list[asyncio.Task[None]] = []
        self._learning: asyncio.Task[None] | None = None  # every provider's key, read once
        self._stopped = False
        self._blocked: dict[str, float] = {}  # job id -> when to try again (no key yet)
        self._unsubscribe = connector.settings_service.subscribe(self._on_settings)

    # ------------------------------------------------------------------ plumbing

    def on_external_change(self, callback: Callable[[], None]) -> None:
        """Called when another process changed the database (its jobs, its images)."""
        self._external.append(callback)

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
        # The values of the latest settings: notices handed over from other threads may
        # arrive out of order, and each says only which fields changed.
        latest = self.connector.settings_service.current
        if new.concurrency != old.concurrency:
            config.concurrency = latest.concurrency
            for slots in self._slots.values():
                slots.limit = max(1, latest.concurrency)
        if new.poll_interval != old.poll_interval:
            config.poll_interval = latest.poll_interval
        if new.job_timeout != old.job_timeout:
            moved, config.job_timeout = latest.job_timeout - config.job_timeout, latest.job_timeout
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
        tasks = [t for t in (*self._bg, *self._tasks.values()) if t is not self._learning]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._learning is not None:
            # Once no job can start any more: the reading of every provider's key runs
            # its keychain calls on threads of their own; let them end (a few ms, or the
            # keychain's own time limit) rather than leave one running as the process
            # exits, which can abort the interpreter's shutdown.
            await asyncio.wait([self._learning], timeout=KEYS_GRACE)
            self._learning.cancel()
            await asyncio.gather(self._learning, return_exceptions=True)
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
        check_spec(spec)

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
        refs = await import_references(self.library, self.connector, spec.refs,
                                       self._keep_metadata)
        jobs = await self.db(
            self.library.add_jobs, spec, refs, count, self.owner, self.config.lease_ttl
        )
        for job in jobs:
            self._emit(job)
            self._spawn(job.id)
        return jobs

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
