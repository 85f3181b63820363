"""The window's one link to the core: engine events become Qt signals, user actions
become engine calls, and library queries run on the database thread, never the GUI's.

Widgets hold a Controller and nothing else from the core; they never touch the network,
the keychain or SQLite themselves.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

from nbdesk.api.base import ApiError
from nbdesk.core.connector import ConfigError
from nbdesk.core.engine import Engine
from nbdesk.core.jobs import RETRYABLE, Job, JobSpec, JobState, RetryPlan
from nbdesk.core.library import Item, LibraryError
from nbdesk.core.runtime import Runtime
from nbdesk.core.secrets import KeychainError, RedactingFilter, SecretStore, redact
from nbdesk.ui.models.keys import KeyStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The app's typed errors a user can act on (bad input, a refused key, a provider's
#: failure, a library that cannot be written...): shown as their one-line message.
EXPECTED = (ApiError, ConfigError, KeychainError, LibraryError)


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is shown as an ordinary message. Besides EXPECTED, an OSError that
    names a file (a full disk, a folder without permission, a file that went away): the
    state of the user's computer, which a crash report would wrongly blame on nbdesk.
    Anything else (a ValueError, KeyError, TypeError, an OSError about no file) is a bug
    in nbdesk and goes to the crash handler."""
    if isinstance(exc, EXPECTED):
        return True
    return isinstance(exc, OSError) and exc.filename is not None


class Controller(QObject):
    jobChanged = Signal(object)  # Job
    jobsReset = Signal()  # another process changed the jobs: reload them
    libraryChanged = Signal()  # items were removed or changed (or added by another process)
    itemsAdded = Signal(object)  # list of ids of new items (a job completed here)
    message = Signal(str, str)  # level ("info" | "warning" | "error"), text
    pausedChanged = Signal(bool)
    jobFinished = Signal(object)  # Job reaching completed/failed (for notifications)
    useAsReference = Signal(str)  # a library file path for the composer's tray
    editRequested = Signal(object)  # Item: new job with it as reference and a new prompt
    rerunRequested = Signal(object)  # Item: the same parameters again

    def __init__(self, rt: Runtime, engine: Engine, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.rt = rt
        self.engine = engine
        self.library = rt.library
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_trashed: list[int] = []
        #: every provider's key status, shared by the window's panels
        self.keys = self.key_status(lambda: self.rt.secrets)
        engine.subscribe(self._on_job)
        engine.on_external_change(self._on_external)

    def key_status(self, secrets: Callable[[], SecretStore]) -> KeyStatus:
        """A key-status model on ``secrets``, its lookups run by ``spawn``; a key saved or
        removed through it reaches the engine at once."""
        model = KeyStatus(secrets, spawn=self.spawn, parent=self)
        model.stored.connect(self._key_stored)
        return model

    def _key_stored(self, provider_id: str) -> None:
        self.engine.connector.forget(provider_id)  # the next job reads the new key
        self.engine.unblock()  # jobs waiting for this key go on now

    # ------------------------------------------------------------------ plumbing

    def _on_job(self, job: Job) -> None:
        self.jobChanged.emit(job)
        if job.state is JobState.COMPLETED:
            self.jobFinished.emit(job)
            self.spawn(self._announce_items(job), what="loading the new image")
        elif job.state is JobState.FAILED:
            self.jobFinished.emit(job)

    async def _announce_items(self, job: Job) -> None:
        items = await self.engine.db(self.library.items_for_job, job.id)
        # itemsAdded only: listeners of libraryChanged (changes to items already shown)
        # need not re-read anything for new ones, and with many jobs finishing they did.
        self.itemsAdded.emit([i.id for i in items])

    def _on_external(self) -> None:
        self.jobsReset.emit()
        self.libraryChanged.emit()

    def spawn(self, coro: Coroutine[Any, Any, T], *, what: str) -> asyncio.Task[T]:
        """Run a coroutine from a slot: an expected failure becomes one message (never a
        traceback), a bug a crash report (``is_expected``)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is None:
                return
            if is_expected(exc):
                self.error(str(exc))
            else:  # a bug: the crash handler (``ui.crash``, installed at start) reports it
                log.error("%s failed with a bug", what)
                sys.excepthook(type(exc), exc, exc.__traceback__)

        task.add_done_callback(done)
        return task

    def error(self, text: str) -> None:
        self.message.emit("error", redact(text, RedactingFilter.known()))

    def info(self, text: str) -> None:
        self.message.emit("info", text)

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.engine.db(fn, *args, **kwargs)

    # ------------------------------------------------------------------ jobs

    async def submit(self, spec: JobSpec, count: int = 1) -> list[Job]:
        return await self.engine.enqueue(spec, count)

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self.spawn(self.engine.cancel(job_id), what="cancelling the job")

    def retry(self, job_ids: Sequence[str], *, paid_ok: bool = False) -> None:
        """Retry now; ``paid_ok`` once the user agreed to new paid submissions (the
        window asks first: ``retry_plans``). Without it the engine refuses a retry that
        may pay twice."""
        for job_id in job_ids:
            self.spawn(self.engine.retry(job_id, resubmit_ok=paid_ok), what="retrying the job")

    @staticmethod
    def retry_plan(job: Job) -> RetryPlan:
        """What Retry does with ``job`` (the engine's rule)."""
        return Engine.retry_plan(job)

    @staticmethod
    def retry_costs(job: Job, plan: RetryPlan) -> bool:
        """Whether a retry of ``job`` by ``plan`` is paid for (Demo never is)."""
        return plan.paid and not job.demo

    async def retry_plans(self, job_ids: Sequence[str]) -> list[tuple[Job, RetryPlan]]:
        """The jobs as they are now (those still retryable) and what Retry does with
        each: read fresh, since the window's rows may be a moment old."""
        jobs: list[Job] = [await self.db(self.library.job, i) for i in job_ids]
        return [(j, self.retry_plan(j)) for j in jobs if j.state in RETRYABLE]

    def update_settings(self, **changes: Any) -> None:
        """Apply a setting changed from the window (not the settings dialog) at once,
        and save it off the GUI thread (the service writes one at a time, the latest);
        a failure to save is one message."""
        service = self.rt.settings_service
        service.update(save=False, **changes)

        async def run() -> None:
            try:
                await asyncio.to_thread(service.save)
            except OSError as e:
                self.error(f"Cannot save the settings to {service.path}: {e.strerror or e}")

        self.spawn(run(), what="saving the settings")

    def remove(self, job_ids: Sequence[str]) -> None:
        async def run() -> None:
            for job_id in job_ids:
                await self.engine.remove(job_id)
            self.jobsReset.emit()

        self.spawn(run(), what="removing jobs")

    def cancel_all(self) -> None:
        async def run() -> None:
            jobs = await self.db(self.library.jobs, [s for s in JobState if s.active])
            for job in jobs:
                await self.engine.cancel(job.id)

        self.spawn(run(), what="cancelling all jobs")

    def set_paused(self, paused: bool) -> None:
        if paused:
            self.engine.pause()
        else:
            self.engine.unpause()
        self.pausedChanged.emit(paused)

    async def jobs(self) -> list[Job]:
        result: list[Job] = await self.db(self.library.jobs)
        return result

    # ------------------------------------------------------------------ library

    async def item_ids(self, **filters: Any) -> list[int]:
        result: list[int] = await self.db(self.library.item_ids, **filters)
        return result

    async def items_by_id(self, ids: Sequence[int]) -> dict[int, Item]:
        result: dict[int, Item] = await self.db(self.library.items_by_id, list(ids))
        return result

    async def item(self, item_id: int) -> Item:
        result: Item = await self.db(self.library.item, item_id)
        return result

    async def edit_chain(self, item_id: int, limit: int = 50) -> tuple[list[int], list[int]]:
        """(the image's ancestors by Edit, oldest first, and itself; the images edited
        from it)."""
        chain = await self.db(self.library.chain, item_id, limit)
        children: list[int] = await self.db(self.library.children, item_id)
        return [i.id for i in chain], children

    def set_favourite(self, item_id: int, favourite: bool) -> None:
        async def run() -> None:
            await self.db(self.library.set_favourite, item_id, favourite)
            self.libraryChanged.emit()

        self.spawn(run(), what="marking the favourite")

    def trash(self, item_ids: Sequence[int]) -> None:
        """Move to the trash; ``undo_trash`` brings the last batch back."""
        async def run() -> None:
            moved: list[int] = await self.db(self.library.trash, list(item_ids))
            self._last_trashed = moved
            self.libraryChanged.emit()
            if moved:
                self.message.emit(
                    "undo", f"Moved {len(moved)} image(s) to the trash — Ctrl+Z to undo"
                )

        self.spawn(run(), what="deleting images")

    @property
    def can_undo(self) -> bool:
        return bool(self._last_trashed)

    def undo_trash(self) -> None:
        ids, self._last_trashed = self._last_trashed, []
        if not ids:
            return

        async def run() -> None:
            restored: list[int] = await self.db(self.library.restore, ids)
            self.libraryChanged.emit()
            self.info(f"Restored {len(restored)} image(s)")

        self.spawn(run(), what="restoring images")

    async def total_cost(self) -> float:
        result: float = await self.db(self.library.total_cost)
        return result
