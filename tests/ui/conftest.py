"""Fixtures for window tests: a qasync loop inside the Qt loop that pytest-qt spins, and
a real runtime + engine + controller on a fresh NBDESK_HOME against the simulator."""

from __future__ import annotations

import asyncio
import gc
import json
import random
from collections.abc import Coroutine, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import qasync
from PySide6.QtCore import QObject, Signal
from pytestqt.qtbot import QtBot

from nbdesk.api.http import RetryPolicy, make_client
from nbdesk.core.connector import Connector
from nbdesk.core.engine import Engine
from nbdesk.core.runtime import Runtime
from nbdesk.demo import start_demo
from nbdesk.sim import SimConfig, Simulator
from nbdesk.ui.controller import Controller

T = TypeVar("T")


@pytest.fixture(scope="session")
def session_loop(qapp: Any) -> Iterator[qasync.QEventLoop]:
    """One asyncio loop on the Qt event loop for the session, as in the app; the Qt
    loop it rides on is the one qtbot.waitSignal / waitUntil spin."""
    loop = qasync.QEventLoop(qapp, already_running=True)
    executor = qasync.QThreadExecutor(4)
    loop.set_default_executor(executor)
    # qasync registered it as the running loop; it is that only while a test uses it
    # (`aloop`), so plain asyncio/anyio tests after a window test get their own loops.
    asyncio.events._set_running_loop(None)
    yield loop
    # Close it as qasync closes a loop whose run_forever returned (no public API for
    # an "already running" loop), so that nothing of it is left for interpreter exit.
    loop._after_run_forever()
    loop._QEventLoop__is_running = False
    loop.close()  # shuts the executor down too
    asyncio.set_event_loop(None)


@pytest.fixture
def aloop(session_loop: qasync.QEventLoop, qtbot: QtBot) -> Iterator[qasync.QEventLoop]:
    """The session loop; tasks a test leaves behind are cancelled after it."""
    asyncio.set_event_loop(session_loop)
    asyncio.events._set_running_loop(session_loop)
    before = set(asyncio.all_tasks(session_loop))
    yield session_loop
    left = [t for t in asyncio.all_tasks(session_loop) if t not in before and not t.done()]
    for task in left:
        task.cancel()
    if left:
        qtbot.waitUntil(lambda: all(t.done() for t in left), timeout=5000)
    asyncio.events._set_running_loop(None)
    asyncio.set_event_loop(None)
    # Collect this test's Qt objects here, on the GUI thread: left to a later collection
    # they may be destroyed from a worker thread, which crashes Qt.
    gc.collect()


class _Done(QObject):
    done = Signal()


def run_async(qtbot: QtBot, coro: Coroutine[Any, Any, T], timeout: int = 15_000) -> T:
    """Run a coroutine to its end while Qt (and so asyncio) keeps processing events."""
    task = asyncio.ensure_future(coro)
    if not task.done():
        notifier = _Done()
        task.add_done_callback(lambda _t: notifier.done.emit())
        with qtbot.waitSignal(notifier.done, timeout=timeout):
            pass
    return task.result()


#: The keys UiEnv's runtime uses (from its environment).
UI_KEYS = {"NBDESK_GEMINI_API_KEY": "ui-gemini-key-0003",
           "NBDESK_APIFRAME_API_KEY": "ui-frame-key-0001",
           "NBDESK_APIFREE_API_KEY": "ui-free-key-0002"}


class UiEnv:
    def __init__(self, qtbot: QtBot, home: Path, sim: Simulator) -> None:
        self.qtbot = qtbot
        self.sim = sim
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        (home / "settings.json").write_text(json.dumps(
            {"version": 1, "poll_interval": 0.2, "default_provider": "apiframe"}))
        self.env = {
            "NBDESK_HOME": str(home),
            **UI_KEYS,
            "NBDESK_APIFRAME_BASE_URL": sim.base_url,
            "NBDESK_APIFREE_BASE_URL": sim.base_url,
            "NBDESK_GEMINI_BASE_URL": sim.base_url,
        }
        self.rt = Runtime.open(self.env)
        self.http = make_client(timeout=10.0)
        self.connector = Connector(
            self.http, self.rt.secrets, self.rt.settings_service, env=self.env,
            policy_factory=lambda: RetryPolicy(base=0.01, cap=0.05, rng=random.Random(1)),
            demo=partial(start_demo, SimConfig(queue_seconds=0.05, job_seconds=0.3)),
        )
        config = self.rt.engine_config()
        config.scan_interval = 0.1
        config.retry = RetryPolicy(base=0.01, cap=0.05, rng=random.Random(2))
        self.engine = Engine(self.rt.library, self.connector, config)
        self.controller = Controller(self.rt, self.engine)

    def start(self) -> None:
        run_async(self.qtbot, self.engine.start())

    def close(self) -> None:
        async def shutdown() -> None:
            await self.engine.stop()
            await self.connector.close()
            await self.http.aclose()

        run_async(self.qtbot, shutdown())
        self.rt.close()


@pytest.fixture
def ui_env(qtbot: QtBot, aloop: qasync.QEventLoop, tmp_path: Path) -> Iterator[UiEnv]:
    with Simulator(SimConfig(queue_seconds=0.05, job_seconds=0.3)) as sim:
        env = UiEnv(qtbot, tmp_path / "home", sim)
        env.start()
        try:
            yield env
        finally:
            env.close()
