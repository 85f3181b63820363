"""The queue panel over the real engine: rows follow the jobs, actions reach the engine."""

from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel
from pytestqt.qtbot import QtBot

from nbdesk.core.jobs import JobSpec, JobState
from nbdesk.core.library import Library
from nbdesk.ui.queue_model import COST, PROGRESS, STATE
from nbdesk.ui.queue_view import QueueView
from tests.ui.conftest import UiEnv, run_async

SPEC = JobSpec("apiframe", "nano-banana", "a quiet harbour")


def select_row(view: QueueView, row: int) -> None:
    """Select exactly this row (QTableView.selectRow would honour whatever keyboard
    modifiers Qt believes are held, and toggle instead)."""
    flags = (QItemSelectionModel.SelectionFlag.ClearAndSelect
             | QItemSelectionModel.SelectionFlag.Rows)
    view.table.selectionModel().select(view.model.index(row, 0), flags)


def state_of(view: QueueView, job_id: str) -> str:
    row = view.model.row_of(job_id)
    assert row is not None
    return str(view.model.index(row, STATE).data())


def test_rows_follow_a_job_to_completed(qtbot: QtBot, ui_env: UiEnv) -> None:
    view = QueueView(ui_env.controller)
    qtbot.addWidget(view)
    (job,) = run_async(qtbot, ui_env.controller.submit(SPEC))
    assert view.model.rowCount() == 1
    qtbot.waitUntil(lambda: state_of(view, job.id) == "completed", timeout=15_000)
    row = view.model.row_of(job.id)
    assert row is not None
    assert view.model.index(row, PROGRESS).data() == "100%"
    assert str(view.model.index(row, COST).data()).startswith("$")


def test_cancel_and_retry_from_the_panel(qtbot: QtBot, ui_env: UiEnv) -> None:
    view = QueueView(ui_env.controller)
    qtbot.addWidget(view)
    ui_env.controller.set_paused(True)
    (job,) = run_async(qtbot, ui_env.controller.submit(SPEC))
    select_row(view, 0)
    assert view.cancel_action.isEnabled() and not view.retry_action.isEnabled()
    view.cancel_action.trigger()
    qtbot.waitUntil(lambda: state_of(view, job.id) == "cancelled", timeout=5000)
    assert ui_env.sim.stats.requests == 0
    ui_env.controller.set_paused(False)
    select_row(view, 0)
    assert view.retry_action.isEnabled()
    view.retry_action.trigger()
    qtbot.waitUntil(lambda: state_of(view, job.id) == "completed", timeout=15_000)


def test_pause_action_holds_the_queue(qtbot: QtBot, ui_env: UiEnv) -> None:
    view = QueueView(ui_env.controller)
    qtbot.addWidget(view)
    view.pause_action.setChecked(True)
    assert ui_env.engine.paused
    (job,) = run_async(qtbot, ui_env.controller.submit(SPEC))
    assert ui_env.rt.library.job(job.id).state is JobState.QUEUED
    view.pause_action.setChecked(False)
    qtbot.waitUntil(lambda: state_of(view, job.id) == "completed", timeout=15_000)


def test_jobs_of_another_process_appear(qtbot: QtBot, ui_env: UiEnv) -> None:
    view = QueueView(ui_env.controller)
    qtbot.addWidget(view)
    other = Library(ui_env.rt.paths)  # the CLI's own connection
    try:
        (job,) = other.add_jobs(SPEC, [], 1, owner="cli-host:4242:abcd", ttl=3600)
    finally:
        other.close()
    qtbot.waitUntil(lambda: view.model.row_of(job.id) is not None, timeout=5000)
    assert state_of(view, job.id) == "queued"


def test_remove_keeps_the_image(qtbot: QtBot, ui_env: UiEnv) -> None:
    view = QueueView(ui_env.controller)
    qtbot.addWidget(view)
    with qtbot.waitSignal(ui_env.controller.itemsAdded, timeout=15_000):
        (job,) = run_async(qtbot, ui_env.controller.submit(SPEC))
    qtbot.waitUntil(lambda: state_of(view, job.id) == "completed", timeout=5000)
    select_row(view, view.model.row_of(job.id) or 0)
    view.remove_action.trigger()
    assert view.model.row_of(job.id) is None
    qtbot.waitUntil(lambda: not any(j.id == job.id for j in ui_env.rt.library.jobs()),
                    timeout=5000)
    assert len(ui_env.rt.library.items()) == 1


def test_a_burst_of_job_events_reaches_the_table_in_one_go(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    """Events that come while the panel waits for its next update are applied together:
    five new jobs are one insertion (newest on top), not five."""
    view = QueueView(ui_env.controller)
    qtbot.addWidget(view)
    ui_env.controller.set_paused(True)  # the jobs stay queued: one event each
    inserted: list[tuple[int, int]] = []
    view.model.rowsInserted.connect(lambda _p, first, last: inserted.append((first, last)))
    jobs = run_async(qtbot, ui_env.controller.submit(SPEC, 5))
    qtbot.waitUntil(lambda: view.model.rowCount() == 5, timeout=5000)
    assert inserted == [(0, 4)]
    assert [view.model.job(r).id for r in range(5)] == [j.id for j in reversed(jobs)]
    assert view.title.text() == "<b>Queue</b> — 5 running"
    ui_env.controller.cancel_all()
    qtbot.waitUntil(lambda: all(state_of(view, j.id) == "cancelled" for j in jobs),
                    timeout=5000)
    assert inserted == [(0, 4)] and view.title.text() == "<b>Queue</b>"
