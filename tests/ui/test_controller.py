"""The controller: engine events arrive as Qt signals; trash is undoable."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from nbdesk.core.jobs import JobSpec, JobState
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
