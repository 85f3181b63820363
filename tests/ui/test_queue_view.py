"""The queue panel over the real engine: rows follow the jobs, actions reach the engine."""

from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel
from PySide6.QtWidgets import QMessageBox
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
    # never sent: its retry is its first paid submission, asked about first
    qtbot.waitUntil(lambda: view.retry_question is not None, timeout=5000)
    assert view.retry_question is not None
    assert ui_env.sim.stats.requests == 0
    box = view.retry_question
    (pay,) = [b for b in box.buttons()
              if box.buttonRole(b) is QMessageBox.ButtonRole.AcceptRole]
    pay.click()
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


def test_a_long_history_gets_its_cells_a_chunk_at_a_time(qtbot: QtBot) -> None:
    """set_jobs makes every row at once and gives them their cells FILL_CHUNK at a time
    (10,000 jobs in one go froze the window 0.7 s): the top rows show at once, the rest
    follow within a few passes of the event loop, and changes meanwhile are not lost."""
    import dataclasses
    import time
    import uuid

    from nbdesk.core.jobs import Job, JobParams
    from nbdesk.ui.queue_model import FILL_CHUNK, JobsModel

    now = time.time()

    def job(i: int, state: JobState = JobState.COMPLETED) -> Job:
        return Job(id=str(uuid.uuid4()), idem_key="k", created_at=now - i, updated_at=now,
                   provider="apiframe", demo=False, model="nano-banana", prompt=f"job {i}",
                   params=JobParams(), refs=(), parent_item=None, state=state,
                   finished_at=None if state.active else now - i + 2)

    model = JobsModel()
    jobs = [job(i, JobState.RUNNING if i == 2 * FILL_CHUNK else JobState.COMPLETED)
            for i in range(5 * FILL_CHUNK)]
    model.set_jobs(jobs)
    assert model.rowCount() == len(jobs) and model.filling()
    assert model.index(0, STATE).data() == "completed"
    assert model.index(len(jobs) - 1, STATE).data() is None  # not filled yet
    # meanwhile: a blank row's job changes, a new job comes, the clock ticks
    late = dataclasses.replace(jobs[-1], state=JobState.FAILED)
    model.upsert_many([late, job(-1, JobState.QUEUED)])
    model.tick()
    assert model.index(0, STATE).data() == "queued" and model.job(0).prompt == "job -1"
    assert model.job(len(jobs)) is late
    qtbot.waitUntil(lambda: not model.filling(), timeout=10_000)
    texts = [model.index(r, STATE).data() for r in range(model.rowCount())]
    assert texts[0] == "queued" and texts[-1] == "failed"
    assert texts.count("running") == 1 and texts.count("completed") == len(jobs) - 2
    assert model.index(len(jobs), COST).data() == ""  # (every cell made)
