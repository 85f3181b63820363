"""What every part of the engine shares: its tuning, its state, the one database thread,
and the one way a job's change is written (masked) and told to the listeners."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from nbdesk.api.http import RetryPolicy
from nbdesk.core.connector import Connector
from nbdesk.core.jobs import ErrorKind, Job, JobState
from nbdesk.core.library import Library, StoredImage, make_owner
from nbdesk.core.secrets import scrub

log = logging.getLogger("nbdesk.core.engine")
T = TypeVar("T")


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


class EngineBase:
    """The engine's shared state and plumbing (``Engine`` is built on it)."""

    def __init__(
        self, library: Library, connector: Connector, config: EngineConfig | None = None
    ) -> None:
        self.library = library
        self.connector = connector
        self.config = config or EngineConfig()
        self.owner = make_owner()
        # set (and replaced) when a setting the engine follows changed: a poll waiting
        # for its turn measures its wait again
        self._config_changed = asyncio.Event()
        self._listeners: list[Listener] = []
        self._running = asyncio.Event()
        self._running.set()
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="nbdesk-db")
        self._poll_errors: dict[str, int] = {}
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

    @property
    def _keep_metadata(self) -> bool:
        """Whether references keep their EXIF/XMP (GPS, camera): the user's setting."""
        return self.connector.settings.keep_reference_metadata

    async def _fail(self, job: Job, message: str, kind: ErrorKind) -> Job:
        return await self._update(
            job, state=JobState.FAILED, error=message, error_kind=kind, note=None,
            finished_at=time.time(),
        )

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
