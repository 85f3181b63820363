"""The reliability suite's shared report: every trial adds its figures, and one summary
block is printed at the end of the run (trials, kills per state, jobs, faults, bad inputs,
duplicates, files lost, leaks, GUI stalls)."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import qasync
import shiboken6
from PySide6.QtCore import QObject
from PySide6.QtWidgets import QApplication, QWidget
from pytestqt.qtbot import QtBot

from nbdesk.api.http import RetryPolicy
from nbdesk.ui.main_window import MainWindow
from tests.e2e import harness
from tests.ui.conftest import UI_KEYS, UiEnv, run_async


@dataclass
class ReliabilityReport:
    trials: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # state (or failpoint) -> kills
    jobs: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # kind -> injected
    bad_inputs: int = 0
    duplicates: int = 0  # paid submissions beyond one per completed job
    files_lost: int = 0  # completed jobs without their image, or hash mismatches
    partial_files: int = 0  # temp or stray files left in the library
    leaks: int = 0  # places a key was found
    leak_scans: int = 0  # scans run (files, outputs and texts searched for every key)
    gui_max_stall_ms: float | None = None  # the storm's, with the window up
    # a provider that misbehaves on purpose (test_hostile.py)
    bomb_peak_mb: float | None = None  # the CLI's peak RSS after a 400 MB gzip bomb
    images_capped: str | None = None  # a result listing 300 images: how many were stored
    timeout_overrun_s: float | None = None  # past the job timeout, a dripped answer
    keys_redacted: int = 0  # scenarios in which the provider repeated the key back
    paid_calls_per_retry: list[int] = field(default_factory=list)  # retries of paid jobs
    offline_trials: int = 0  # jobs killed while they waited for the network
    offline_interrupted: int = 0  # of those, found interrupted afterwards (must be 0)
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_faults(self, faults: dict[str, int]) -> None:
        with self.lock:
            self.faults.update({k: v for k, v in faults.items() if v})

    def lines(self) -> list[str]:
        kills = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items())) or "none"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        out = [
            f"trials run        {self.trials}",
            f"kills per state   {kills}",
            f"jobs              {self.jobs}",
            f"faults injected   {sum(self.faults.values())} ({faults})",
            f"bad inputs tried  {self.bad_inputs}",
            f"duplicates found  {self.duplicates}",
            f"files lost        {self.files_lost}",
            f"partial files     {self.partial_files}",
            f"leaks found       {self.leaks} (in {self.leak_scans} scans)",
            "GUI max stall     " + ("not measured" if self.gui_max_stall_ms is None else
                                    f"{self.gui_max_stall_ms:.1f} ms (storm; goal < 50 ms)"),
        ]
        out += [
            "gzip bomb peak    " + ("not measured" if self.bomb_peak_mb is None else
                                    f"{self.bomb_peak_mb:.0f} MB RSS (400 MB bomb; goal < 300)"),
            f"images capped     {self.images_capped or 'not tried'}",
            "timeout overrun   " + ("not measured" if self.timeout_overrun_s is None else
                                    f"{self.timeout_overrun_s:.1f} s past a 10 s job timeout"),
            f"keys redacted     {self.keys_redacted} scenario(s) with the key echoed back",
            "paid calls/retry  " + (
                f"{max(self.paid_calls_per_retry)} (max over "
                f"{len(self.paid_calls_per_retry)} retries of jobs the provider had)"
                if self.paid_calls_per_retry else "not tried"),
            f"offline jobs      {self.offline_trials} killed while offline, "
            f"{self.offline_interrupted} found interrupted",
        ]
        return out + [f"note: {n}" for n in self.notes]


_REPORT = ReliabilityReport()


@pytest.fixture(scope="session")
def report() -> Iterator[ReliabilityReport]:
    yield _REPORT


# ---------------------------------------------------------------------------- the sweep
#
# After the whole run, every folder a reliability test worked in (its tmp_path: the
# NBDESK_HOMEs of the CLI, app and window runs, with their databases, logs, crash reports,
# images and thumbnails) and the output of every CLI command run through the e2e harness
# are searched for the API keys those runs used. A hit fails the run.

#: The keys the suite's runs use: the CLI/app harness, the window fixture, bad input.
SWEEP_KEYS = {
    "harness apiframe key": harness.APIFRAME_KEY,
    "harness apifree key": harness.APIFREE_KEY,
    "window apiframe key": UI_KEYS["NBDESK_APIFRAME_API_KEY"],
    "window apifree key": UI_KEYS["NBDESK_APIFREE_API_KEY"],
    "window gemini key": UI_KEYS["NBDESK_GEMINI_API_KEY"],
    "bad-input apiframe key": "frame-test-key-123",
}
_SWEPT: list[Path] = []


@pytest.fixture(autouse=True)
def sweep_this_tests_folder(request: pytest.FixtureRequest) -> None:
    if "tmp_path" in request.fixturenames:
        _SWEPT.append(request.getfixturevalue("tmp_path"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.reliability.leaks import LeakScan

    roots = [p for p in _SWEPT if p.is_dir()]
    if not roots:
        return
    scan = LeakScan(SWEEP_KEYS)
    for root in roots:
        scan.tree(root)
    for n, result in enumerate(harness.OUTPUTS):
        scan.result(result, f"CLI command #{n}")
    r = _REPORT
    with r.lock:
        r.leaks += len(scan.hits)
        r.leak_scans += 1
        r.notes.append(
            f"suite-wide leak scan: {len(SWEEP_KEYS)} keys x 11 forms over {len(roots)} test "
            f"folders ({len(scan.files)} files, image metadata decoded) and "
            f"{len(harness.OUTPUTS)} CLI outputs: {len(scan.hits)} hits")
        r.notes += [f"LEAK: {hit}" for hit in scan.hits[:50]]
    if scan.hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    r = _REPORT
    if not (r.trials or r.jobs or r.bad_inputs or r.leaks or r.notes):
        return
    terminalreporter.section("nbdesk reliability summary")
    for line in r.lines():
        terminalreporter.write_line(line)


# ---------------------------------------------------------------------------- window tests
#
# Window tests here run in the same process as thread-heavy tests (simulators, engines,
# CLI harnesses). A Qt object must be destroyed on the GUI thread: left in a reference
# cycle, the garbage collector may destroy it from whatever thread allocates next, which
# crashes the process, possibly in a later test module. So every test starts and ends
# with a collection on this thread, and the window fixtures delete their Qt objects
# explicitly once the engine has stopped.


@pytest.fixture(autouse=True)
def collect_qt_garbage_on_the_gui_thread() -> Iterator[None]:
    gc.collect()
    yield
    gc.collect()


def release(*objects: QObject) -> None:
    """Destroy Qt objects now, on the GUI thread."""
    for obj in objects:
        if shiboken6.isValid(obj):
            shiboken6.delete(obj)


@pytest.fixture
def qt_loop(qapp: QApplication, qtbot: QtBot) -> Iterator[asyncio.AbstractEventLoop]:
    """The app's arrangement: an asyncio loop riding on the Qt loop that qtbot spins.

    tests/ui keeps one such loop for its whole session; when it is up already it is
    shared. Otherwise one is made for this test and closed after it, so that the anyio
    tests of the suite find no loop left running.
    """
    current = asyncio._get_running_loop()
    owned: qasync.QEventLoop | None = None
    if isinstance(current, qasync.QEventLoop):
        loop = current
    else:
        loop = owned = qasync.QEventLoop(qapp, already_running=True)
        loop.set_default_executor(qasync.QThreadExecutor(4))
        asyncio.set_event_loop(loop)
    before = set(asyncio.all_tasks(loop))
    try:
        yield loop
    finally:
        left = [t for t in asyncio.all_tasks(loop) if t not in before and not t.done()]
        for task in left:
            task.cancel()
        if left:
            qtbot.waitUntil(lambda: all(t.done() for t in left), timeout=5000)
        if owned is not None:
            # As qasync closes a loop whose run_forever returned (no public API for an
            # "already running" loop).
            asyncio.events._set_running_loop(None)
            owned._after_run_forever()
            owned._QEventLoop__is_running = False
            owned.close()
            asyncio.set_event_loop(None)
            # Its QObjects (one may still hold the timers of callbacks never run) go now.
            release(owned._timer, owned._QEventLoop__call_soon_signaller)


class WindowEnv(UiEnv):
    """tests/ui's UiEnv (real runtime, engine and Controller against a simulator, given as
    anything with a ``base_url``) with its own concurrency and, when given, the engine's
    own waiting policy. Its windows are hidden before the engine stops and destroyed after,
    on the GUI thread: pytest-qt would close them only after this fixture, and leave them
    to the garbage collector."""

    def __init__(self, qtbot: QtBot, home: Path, sim: Any, *, concurrency: int,
                 retry: RetryPolicy | None) -> None:
        super().__init__(qtbot, home, sim)
        self.engine.config.concurrency = concurrency  # the semaphores are made on first use
        if retry is not None:
            self.engine.config.retry = retry
        self.windows: list[QWidget] = []

    def show_window(self) -> MainWindow:
        window = MainWindow(self.controller)
        self.keep(window)
        window.show()
        self.qtbot.waitExposed(window)
        return window

    def keep(self, widget: QWidget) -> None:
        """Close and destroy this top-level widget (a dialog) with the windows."""
        self.windows.append(widget)

    def close(self) -> None:
        for window in self.windows:
            window.close()
        super().close()
        release(*self.windows, self.controller)
        self.windows.clear()


@pytest.fixture
def make_ui(
    qtbot: QtBot, qt_loop: asyncio.AbstractEventLoop, tmp_path: Path,
) -> Iterator[Callable[..., WindowEnv]]:
    """``make_ui(sim, concurrency=16, retry=None)``: a started WindowEnv on ``sim``."""
    made: list[WindowEnv] = []

    def make(sim: Any, *, concurrency: int = 16,
             retry: RetryPolicy | None = None) -> WindowEnv:
        env = WindowEnv(qtbot, tmp_path / f"home{len(made)}", sim, concurrency=concurrency,
                        retry=retry)
        made.append(env)
        env.start()
        return env

    yield make
    for env in reversed(made):
        env.close()


__all__ = ["ReliabilityReport", "WindowEnv", "release", "run_async"]
