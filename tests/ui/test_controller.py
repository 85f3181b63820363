"""The controller: engine events arrive as Qt signals; trash is undoable."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import QObject
from pytestqt.qtbot import QtBot

from nbdesk.core.jobs import JobSpec, JobState
from nbdesk.ui.crash import CrashHandler
from tests.ui.conftest import UiEnv, run_async


def test_a_submitted_job_reports_through_signals_into_the_library(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    c = ui_env.controller
    with qtbot.waitSignal(c.itemsAdded, timeout=15_000) as added:
        jobs = run_async(qtbot, c.submit(JobSpec("apiframe", "nano-banana", "a lighthouse")))
    (item_id,) = added.args[0]
    item = run_async(qtbot, c.item(item_id))
    assert item.job_id == jobs[0].id and item.path.is_file()
    assert ui_env.rt.library.job(jobs[0].id).state is JobState.COMPLETED


def test_trash_then_undo(qtbot: QtBot, ui_env: UiEnv) -> None:
    c = ui_env.controller
    with qtbot.waitSignal(c.itemsAdded, timeout=15_000) as added:
        run_async(qtbot, c.submit(JobSpec("apiframe", "nano-banana", "to delete")))
    (item_id,) = added.args[0]
    with qtbot.waitSignal(c.message, check_params_cb=lambda level, _t: level == "undo"):
        c.trash([item_id])
    assert run_async(qtbot, c.item_ids()) == [] and c.can_undo
    with qtbot.waitSignal(c.message, check_params_cb=lambda level, _t: level == "info"):
        c.undo_trash()
    assert run_async(qtbot, c.item_ids()) == [item_id]


def test_errors_become_one_message(qtbot: QtBot, ui_env: UiEnv) -> None:
    c = ui_env.controller
    with qtbot.waitSignal(c.message, timeout=5000) as msg:
        c.spawn(c.submit(JobSpec("apiframe", "nano-banana", "  ")), what="queueing")
    assert msg.args == ["error", "the prompt is empty"]


def test_a_job_removed_meanwhile_is_a_message_not_a_crash(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    """Something a user can cause (the CLI removed the job the window still shows) is a
    typed error: one message, no crash report."""
    c = ui_env.controller
    handler = CrashHandler(tmp_path / "logs")
    handler.install()
    try:
        with qtbot.waitSignal(c.message, timeout=5000) as msg:
            c.spawn(c.retry_plans(["0123456789abcdef"]), what="retrying")
        assert msg.args == ["error", "job 0123456789abcdef is no longer in the library"]
        assert handler.reports == [] and handler.dialogs == []
    finally:
        handler.uninstall()


def test_a_file_the_user_named_failing_is_a_message(qtbot: QtBot, ui_env: UiEnv) -> None:
    c = ui_env.controller

    async def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/media/usb/cat.png")

    with qtbot.waitSignal(c.message, timeout=5000) as msg:
        c.spawn(full_disk(), what="exporting")
    assert msg.args[0] == "error" and "No space left on device" in msg.args[1]


@pytest.mark.parametrize("bug", [ValueError("bad rounding"), KeyError("size"),
                                 OSError(errno.EBADF, "Bad file descriptor")])
def test_a_bug_goes_to_the_crash_handler_not_the_message_line(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path, bug: Exception
) -> None:
    """A ValueError (or anything untyped, or an OSError about no file) is nbdesk's bug:
    reported by the crash handler, not passed off as an ordinary message."""
    c = ui_env.controller
    messages: list[tuple[str, str]] = []
    c.message.connect(lambda level, text: messages.append((level, text)))
    handler = CrashHandler(tmp_path / "logs")
    handler.install()

    async def buggy() -> None:
        raise bug

    try:
        c.spawn(buggy(), what="drawing")
        qtbot.waitUntil(lambda: len(handler.dialogs) == 1, timeout=5000)
        (report,) = handler.reports
        assert type(bug).__name__ in report.read_text()
        assert messages == []
        handler.dialogs[0].close()
    finally:
        handler.uninstall()


def test_then_hands_the_result_to_a_live_receiver_only(qtbot: QtBot, ui_env: UiEnv) -> None:
    """``then`` is the widgets' one lifetime guard: a result that arrives after its
    widget was deleted is dropped, not handed to a dead object."""
    c = ui_env.controller
    release = asyncio.Event()

    async def answer(value: int) -> int:
        await release.wait()
        return value

    alive, gone = QObject(), QObject()
    got: list[tuple[str, int]] = []
    first = c.then(answer(1), alive, lambda v: got.append(("alive", v)), what="a test")
    second = c.then(answer(2), gone, lambda v: got.append(("gone", v)), what="a test")
    shiboken6.delete(gone)
    release.set()
    run_async(qtbot, asyncio.wait_for(asyncio.gather(first, second), 5))
    assert got == [("alive", 1)]
