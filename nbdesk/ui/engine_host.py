"""The desktop app's engine on a thread of its own, so HTTP work never stalls the GUI.

``hosted_engine(rt, ...)`` is ``Runtime.engine`` run on a private asyncio loop in the
worker thread ``nbdesk-engine``: the engine, its HTTP client and every request live
there. The GUI thread gets an ``EngineProxy`` with the calls the Controller and the
widgets make:

- user actions (``enqueue``, ``cancel``, ``retry``, ``remove``, ``start``) run on the
  engine loop (``run_coroutine_threadsafe``) and are awaited on the caller's loop;
- ``db`` runs the library call on the engine's one database thread, as before, without
  going through the engine loop;
- job events and external changes are queued in order and handed to the subscribers on
  the GUI loop (``call_soon_threadsafe``), in batches: one wake-up for whatever arrived
  while the GUI thread was busy;
- ``pause``/``unpause``/``unblock`` and the connector's ``settings``/``forget`` are
  scheduled on the engine loop; ``paused`` answers at once from the GUI side's record.

Leaving ``hosted_engine`` stops the engine in order on its loop (the GUI loop keeps
running meanwhile), delivers the last events, ends the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from nbdesk.core.engine import Engine, Listener
from nbdesk.core.jobs import Job, JobSpec
from nbdesk.core.runtime import Runtime, start_engine
from nbdesk.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

THREAD_NAME = "nbdesk-engine"
_EXTERNAL = object()  # marks "another process changed the library" in the event queue


class ConnectorProxy:
    """The two things the settings dialog does to the engine's connector."""

    def __init__(self, proxy: EngineProxy) -> None:
        self._proxy = proxy

    @property
    def settings(self) -> Settings:
        return self._proxy._engine.connector.settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self._proxy._soon(setattr, self._proxy._engine.connector, "settings", value)

    def forget(self, provider_id: str) -> None:
        self._proxy._soon(self._proxy._engine.connector.forget, provider_id)


class EngineProxy:
    """The GUI thread's handle on an engine running on another thread's loop."""

    def __init__(self, engine: Engine, engine_loop: asyncio.AbstractEventLoop,
                 gui_loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = engine_loop
        self._gui = gui_loop
        self._listeners: list[Listener] = []
        self._external: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._pending: list[Any] = []
        self._paused = engine.paused
        self.connector = ConnectorProxy(self)
        self.library = engine.library
        self.config = engine.config
        engine.subscribe(self._queue)
        engine.on_external_change(lambda: self._queue(_EXTERNAL))

    # ------------------------------------------------------------------ plumbing

    def _call(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on the engine loop; a future of its result on the caller's loop
        (cancelling it cancels the coroutine)."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    def _queue(self, event: Any) -> None:
        """Engine thread: keep the event; wake the GUI loop if it is not due already."""
        with self._lock:
            self._pending.append(event)
            wake = len(self._pending) == 1
        if wake:
            with contextlib.suppress(RuntimeError):  # the GUI loop is gone: nobody listens
                self._gui.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """GUI thread: hand every event queued so far to the subscribers, in order."""
        with self._lock:
            batch, self._pending = self._pending, []
        for event in batch:
            if event is _EXTERNAL:
                for callback in list(self._external):
                    try:
                        callback()
                    except Exception:
                        log.exception("external-change listener failed")
                continue
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("job listener failed")

    # ------------------------------------------------------------------ Engine's API

    def subscribe(self, listener: Listener) -> None:
        """``listener(job)`` runs on the GUI loop after every persisted change."""
        self._listeners.append(listener)

    def on_external_change(self, callback: Callable[[], None]) -> None:
        self._external.append(callback)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a library call on the engine's one database thread."""
        return await self._engine.db(fn, *args, **kwargs)

    async def start(self, *, resume: bool = True) -> None:
        """``start_engine`` on the engine loop: make the HTTP client, take up the jobs."""
        await self._call(start_engine(self._engine, resume=resume))

    async def enqueue(self, spec: JobSpec, count: int = 1) -> list[Job]:
        return await self._call(self._engine.enqueue(spec, count))

    async def cancel(self, job_id: str) -> Job:
        return await self._call(self._engine.cancel(job_id))

    async def retry(self, job_id: str) -> Job:
        return await self._call(self._engine.retry(job_id))

    async def remove(self, job_id: str) -> None:
        await self._call(self._engine.remove(job_id))

    async def wait(self, job_ids: Sequence[str]) -> list[Job]:
        return await self._call(self._engine.wait(job_ids))

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True
        self._soon(self._engine.pause)

    def unpause(self) -> None:
        self._paused = False
        self._soon(self._engine.unpause)

    def unblock(self) -> None:
        self._soon(self._engine.unblock)


class _Thread:
    """The worker thread and its loop, which runs ``Runtime.engine`` until told to stop."""

    def __init__(self, rt: Runtime, options: dict[str, Any],
                 gui_loop: asyncio.AbstractEventLoop) -> None:
        self.rt = rt
        self.options = options
        self.gui = gui_loop
        self.opened: Future[EngineProxy] = Future()
        self.finished: asyncio.Future[None] = gui_loop.create_future()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.main, name=THREAD_NAME, daemon=False)

    def main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                runner.run(self.serve())
        except BaseException as exc:  # reported to the GUI side, which raises it
            self.error = exc
        finally:
            if not self.opened.done():
                self.opened.set_exception(self.error or RuntimeError("the engine did not open"))
            with contextlib.suppress(RuntimeError):  # the GUI loop is closed already
                self.gui.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        async with self.rt.engine(**self.options) as engine:
            self.opened.set_result(EngineProxy(engine, self.loop, self.gui))
            await self.stop.wait()
        # leaving the block stopped the engine and closed its client, on this loop


@contextlib.asynccontextmanager
async def hosted_engine(
    rt: Runtime, *, take_over: bool = True, resume: bool = True, start: bool = True,
) -> AsyncIterator[EngineProxy]:
    """``rt.engine(...)`` on its own thread; the proxy is for the calling (GUI) loop."""
    worker = _Thread(rt, {"take_over": take_over, "resume": resume, "start": False},
                     asyncio.get_running_loop())
    worker.thread.start()
    opened = False
    try:
        proxy = await asyncio.wrap_future(worker.opened)
        opened = True
        if start:
            await proxy.start(resume=resume)
        yield proxy
    finally:
        with contextlib.suppress(BaseException):  # (cancelled while opening) let it open
            await asyncio.shield(asyncio.wrap_future(worker.opened))
        loop, stop = worker.loop, worker.stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the thread's loop ended already
                loop.call_soon_threadsafe(stop.set)
        # Wait without blocking this loop (events still arriving are delivered first);
        # shielded: a cancelled caller must not leave the thread running.
        await asyncio.shield(worker.finished)
        worker.thread.join()
    if opened and worker.error is not None:
        raise worker.error  # the engine's orderly stop failed
