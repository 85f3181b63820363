"""The window's one link to the core: engine events become Qt signals, user actions
become engine calls, and library queries run on the database thread, never the GUI's.

Widgets hold a Controller and nothing else from the core; they never touch the network,
the keychain or SQLite themselves. The runtime, the engine and the library are private
here: a widget asks for what it wants (``settings``, ``item(id)``, ``retry_plans(...)``,
``unblock_jobs()``...), so that the core can change behind this one small surface.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import shiboken6
from PySide6.QtCore import QObject, Signal

from nbdesk.api.base import ApiError
from nbdesk.core.connector import ConfigError
from nbdesk.core.engine import Engine
from nbdesk.core.jobs import RETRYABLE, Job, JobSpec, JobState, RetryPlan
from nbdesk.core.library import Item, LibraryError
from nbdesk.core.runtime import Runtime
from nbdesk.core.secrets import KeychainError, RedactingFilter, SecretStore, redact
from nbdesk.core.settings import Settings
from nbdesk.ui.models.history import HISTORY_NAME, PromptHistory
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
        self._rt = rt
        self._engine = engine
        self._library = rt.library
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_trashed: list[int] = []
        #: every provider's key status, shared by the window's panels
        self.keys = self.key_status(lambda: self._rt.secrets)
        #: the prompt history, shared by the composers (read at the first ``load``)
        self.history = PromptHistory(self._library.root / HISTORY_NAME, spawn=self.spawn,
                                     parent=self)
        engine.subscribe(self._on_job)
        engine.on_external_change(self._on_external)

    def key_status(self, secrets: Callable[[], SecretStore]) -> KeyStatus:
        """A key-status model on ``secrets``, its lookups run by ``spawn``; a key saved or
        removed through it reaches the engine at once."""
        model = KeyStatus(secrets, spawn=self.spawn, parent=self)
        model.stored.connect(self._key_stored)
        return model

    def _key_stored(self, provider_id: str) -> None:
        self._engine.connector.forget(provider_id)  # the next job reads the new key
        self.unblock_jobs()  # jobs waiting for this key go on now

    # ------------------------------------------------------------------ where things are

    @property
    def library_root(self) -> Path:
        """The library's folder (an item's reference paths are relative to it)."""
        return self._library.root

    @property
    def thumbnail_dir(self) -> Path:
        """Where the thumbnail cache lives."""
        return self._library.paths.thumbnails

    @property
    def layout_file(self) -> Path:
        """The window's layout (sizes of its panels), beside the settings file."""
        return self._rt.paths.settings_file.parent / "window.ini"

    def scratch_file(self, suffix: str) -> Path:
        """A new, unused path in the library's scratch folder (a pasted image...)."""
        return self._rt.paths.tmp / f"paste-{uuid.uuid4().hex}{suffix}"

    # ------------------------------------------------------------------ plumbing

    def _on_job(self, job: Job) -> None:
        self.jobChanged.emit(job)
        if job.state is JobState.COMPLETED:
            self.jobFinished.emit(job)
            self.spawn(self._announce_items(job), what="loading the new image")
        elif job.state is JobState.FAILED:
            self.jobFinished.emit(job)

    async def _announce_items(self, job: Job) -> None:
        items = await self.items_for_job(job.id)
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

    def then(self, coro: Coroutine[Any, Any, T], receiver: QObject,
             slot: Callable[[T], Any], *, what: str) -> asyncio.Task[None]:
        """Run ``coro`` (as ``spawn`` does) and hand its result to ``slot``, unless
        ``receiver`` (the widget the slot belongs to) was deleted meanwhile: the one
        lifetime guard, so that widgets need no coroutine of their own."""
        async def run() -> None:
            result = await coro
            if shiboken6.isValid(receiver):
                slot(result)

        return self.spawn(run(), what=what)

    def error(self, text: str) -> None:
        self.message.emit("error", redact(text, RedactingFilter.known()))

    def info(self, text: str) -> None:
        self.message.emit("info", text)

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._engine.db(fn, *args, **kwargs)

    # ------------------------------------------------------------------ jobs

    async def submit(self, spec: JobSpec, count: int = 1) -> list[Job]:
        return await self._engine.enqueue(spec, count)

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self.spawn(self._engine.cancel(job_id), what="cancelling the job")

    def retry(self, job_ids: Sequence[str], *, paid_ok: bool = False) -> None:
        """Retry now; ``paid_ok`` once the user agreed to new paid submissions (the
        window asks first: ``retry_plans``). Without it the engine refuses a retry that
        may pay twice."""
        for job_id in job_ids:
            self.spawn(self._engine.retry(job_id, resubmit_ok=paid_ok), what="retrying the job")

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
        jobs: list[Job] = [await self.db(self._library.job, i) for i in job_ids]
        return [(j, self.retry_plan(j)) for j in jobs if j.state in RETRYABLE]

    def unblock_jobs(self) -> None:
        """Jobs waiting for a key or a setting try again now."""
        self._engine.unblock()

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> Settings:
        """The settings as they are now (read at use: they change while the app runs)."""
        return self._rt.settings

    @property
    def settings_file(self) -> Path | None:
        return self._rt.settings_service.path

    def check_settings(self, **changes: Any) -> Settings:
        """The settings with ``changes``, checked, not applied; ValueError with a
        user-facing message."""
        return self._rt.settings_service.check(**changes)

    async def save_settings(self, **changes: Any) -> tuple[Settings, Settings]:
        """Apply ``changes`` and write them (off the GUI thread); the service tells the
        connector and the engine. (the settings before, after); OSError if the file
        cannot be written."""
        service = self._rt.settings_service
        old = service.current
        new = await asyncio.to_thread(functools.partial(service.update, force=True,
                                                        **changes))
        return old, new

    def update_settings(self, **changes: Any) -> None:
        """Apply a setting changed from the window (not the settings dialog) at once,
        and save it off the GUI thread (the service writes one at a time, the latest);
        a failure to save is one message."""
        service = self._rt.settings_service
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
                await self._engine.remove(job_id)
            self.jobsReset.emit()

        self.spawn(run(), what="removing jobs")

    def cancel_all(self) -> None:
        async def run() -> None:
            jobs = await self.db(self._library.jobs, [s for s in JobState if s.active])
            for job in jobs:
                await self._engine.cancel(job.id)

        self.spawn(run(), what="cancelling all jobs")

    def set_paused(self, paused: bool) -> None:
        if paused:
            self._engine.pause()
        else:
            self._engine.unpause()
        self.pausedChanged.emit(paused)

    async def jobs(self) -> list[Job]:
        result: list[Job] = await self.db(self._library.jobs)
        return result

    # ------------------------------------------------------------------ library

    async def item_ids(self, **filters: Any) -> list[int]:
        result: list[int] = await self.db(self._library.item_ids, **filters)
        return result

    async def items_by_id(self, ids: Sequence[int]) -> dict[int, Item]:
        result: dict[int, Item] = await self.db(self._library.items_by_id, list(ids))
        return result

    async def item(self, item_id: int) -> Item:
        result: Item = await self.db(self._library.item, item_id)
        return result

    async def item_for_path(self, path: Path) -> Item | None:
        """The library's item whose file is ``path``, if any."""
        result: Item | None = await self.db(self._library.item_for_path, path)
        return result

    async def items_for_job(self, job_id: str) -> list[Item]:
        result: list[Item] = await self.db(self._library.items_for_job, job_id)
        return result

    async def edit_chain(self, item_id: int, limit: int = 50) -> tuple[list[int], list[int]]:
        """(the image's ancestors by Edit, oldest first, and itself; the images edited
        from it)."""
        chain = await self.db(self._library.chain, item_id, limit)
        children: list[int] = await self.db(self._library.children, item_id)
        return [i.id for i in chain], children

    def set_favourite(self, item_id: int, favourite: bool) -> None:
        async def run() -> None:
            await self.db(self._library.set_favourite, item_id, favourite)
            self.libraryChanged.emit()

        self.spawn(run(), what="marking the favourite")

    def trash(self, item_ids: Sequence[int]) -> None:
        """Move to the trash; ``undo_trash`` brings the last batch back."""
        async def run() -> None:
            moved: list[int] = await self.db(self._library.trash, list(item_ids))
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
            restored: list[int] = await self.db(self._library.restore, ids)
            self.libraryChanged.emit()
            self.info(f"Restored {len(restored)} image(s)")

        self.spawn(run(), what="restoring images")

    async def total_cost(self) -> float:
        result: float = await self.db(self._library.total_cost)
        return result
