"""The window's side of money safety (issue 15): a Retry that costs money is asked about
first, the composer states what a count of images costs and caps it, and jobs waiting for
the network are said once in the status bar. Real engine against the simulator."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from nbdesk.api.capabilities import GEMINI
from nbdesk.core.jobs import MAX_COUNT, OFFLINE_NOTE, Job, JobSpec, JobState, RetryPlan
from nbdesk.core.library import Library
from nbdesk.core.settings import load_settings
from nbdesk.ui.composer import CONFIRM_COUNT, Composer
from nbdesk.ui.main_window import MainWindow
from nbdesk.ui.queue_model import RETRY_TEXTS, STATE
from nbdesk.ui.queue_view import QueueView
from tests.ui.conftest import UiEnv, run_async

SPEC = JobSpec("apiframe", "nano-banana", "a quiet harbour")
OTHER = "otherhost:4242:abcd"  # another process: its lease keeps our engine off a job


def select(view: QueueView, *job_ids: str) -> None:
    """Select exactly these jobs' rows."""
    sel = view.table.selectionModel()
    sel.clearSelection()
    for job_id in job_ids:
        row = view.model.row_of(job_id)
        assert row is not None
        sel.select(view.model.index(row, 0), QItemSelectionModel.SelectionFlag.Select
                   | QItemSelectionModel.SelectionFlag.Rows)


def tooltip(view: QueueView, job_id: str) -> str:
    row = view.model.row_of(job_id)
    assert row is not None
    return str(view.model.index(row, STATE).data(Qt.ItemDataRole.ToolTipRole))


def stage(env: UiEnv, count: int = 1, **fields: object) -> list[Job]:
    """Jobs as another nbdesk process leaves them in the database (its own connection),
    which the window learns of as it does of any other process's change."""
    other = Library(env.rt.paths)
    try:
        jobs = other.add_jobs(SPEC, [], count, owner=OTHER, ttl=3600)
        staged = [other.update_job(j.id, OTHER, **fields) for j in jobs]
        if fields.get("state") in (JobState.INTERRUPTED, JobState.FAILED):
            for job in staged:
                other.release(OTHER, job.id)
    finally:
        other.close()
    return staged


def interrupted(env: UiEnv, count: int = 1) -> list[Job]:
    return stage(env, count, state=JobState.INTERRUPTED, submit_attempts=1,
                 error_kind="unanswered", finished_at=time.time(),
                 error="the submit may or may not have reached Apiframe")


def question(qtbot: QtBot, view: QueueView) -> QMessageBox:
    qtbot.waitUntil(lambda: view.retry_question is not None
                    and view.retry_question.isVisible(), timeout=5000)
    assert view.retry_question is not None
    return view.retry_question


def button(box: QMessageBox, role: QMessageBox.ButtonRole) -> object:
    (found,) = [b for b in box.buttons() if box.buttonRole(b) is role]
    return found


@pytest.fixture
def view(qtbot: QtBot, ui_env: UiEnv) -> QueueView:
    widget = QueueView(ui_env.controller)
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


# ---------------------------------------------------------------------- Retry


def test_retry_of_a_job_the_provider_has_asks_nothing_and_pays_nothing(
    qtbot: QtBot, ui_env: UiEnv, view: QueueView
) -> None:
    # The provider took the job (a remote id), then its poll answers were unreadable.
    ui_env.sim.script("apiframe.poll", ["malformed"] * (ui_env.engine.config.max_protocol_errors
                                                       + 1))
    (job,) = run_async(qtbot, ui_env.controller.submit(SPEC))
    qtbot.waitUntil(lambda: ui_env.rt.library.job(job.id).state is JobState.FAILED,
                    timeout=15_000)
    failed = ui_env.rt.library.job(job.id)
    assert failed.remote_id and failed.error_kind == "protocol"
    assert ui_env.sim.stats.submits["apiframe"] == 1
    qtbot.waitUntil(lambda: RETRY_TEXTS[RetryPlan.CONTINUE] in tooltip(view, job.id),
                    timeout=5000)
    select(view, job.id)
    view.retry_action.trigger()
    qtbot.waitUntil(lambda: ui_env.rt.library.job(job.id).state is JobState.COMPLETED,
                    timeout=15_000)
    assert view.retry_question is None
    assert ui_env.sim.stats.submits["apiframe"] == 1  # polled again, not paid again


def test_retry_of_an_interrupted_job_asks_and_cancel_sends_nothing(
    qtbot: QtBot, ui_env: UiEnv, view: QueueView
) -> None:
    (job,) = interrupted(ui_env)
    qtbot.waitUntil(lambda: view.model.row_of(job.id) is not None, timeout=5000)
    assert RETRY_TEXTS[RetryPlan.RESUBMIT] in tooltip(view, job.id)
    select(view, job.id)
    view.table.setFocus()
    qtbot.keyClick(view.table, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # Ctrl+R
    box = question(qtbot, view)
    assert "new paid submission" in box.text()
    assert "may already have billed" in box.informativeText()
    with qtbot.waitSignal(box.finished, timeout=5000):
        button(box, QMessageBox.ButtonRole.RejectRole).click()  # type: ignore[attr-defined]
    assert view.retry_question is None
    assert ui_env.rt.library.job(job.id).state is JobState.INTERRUPTED
    assert ui_env.sim.stats.requests == 0
    assert ui_env.rt.settings.confirm_paid_retry  # Cancel changes nothing

    view.retry_action.trigger()
    box = question(qtbot, view)
    with qtbot.waitSignal(box.finished, timeout=5000):
        button(box, QMessageBox.ButtonRole.AcceptRole).click()  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: ui_env.rt.library.job(job.id).state is JobState.COMPLETED,
                    timeout=15_000)
    assert ui_env.sim.stats.submits["apiframe"] == 1


def test_dont_ask_again_is_saved_and_skips_the_question(
    qtbot: QtBot, ui_env: UiEnv, view: QueueView
) -> None:
    first, second = interrupted(ui_env, 2)
    qtbot.waitUntil(lambda: view.model.row_of(second.id) is not None, timeout=5000)
    select(view, first.id)
    view.retry_action.trigger()
    box = question(qtbot, view)
    box.checkBox().setChecked(True)
    with qtbot.waitSignal(box.finished, timeout=5000):
        button(box, QMessageBox.ButtonRole.AcceptRole).click()  # type: ignore[attr-defined]
    settings_file = ui_env.rt.paths.settings_file
    qtbot.waitUntil(lambda: not load_settings(settings_file).confirm_paid_retry, timeout=5000)
    assert not ui_env.rt.settings.confirm_paid_retry
    assert load_settings(settings_file).poll_interval == 0.2  # the rest kept
    qtbot.waitUntil(lambda: ui_env.rt.library.job(first.id).state is JobState.COMPLETED,
                    timeout=15_000)

    select(view, second.id)
    view.retry_action.trigger()
    qtbot.waitUntil(lambda: ui_env.rt.library.job(second.id).state is JobState.COMPLETED,
                    timeout=15_000)
    assert view.retry_question is None
    assert ui_env.sim.stats.submits["apiframe"] == 2


def test_a_mixed_selection_continues_the_free_ones_and_asks_about_the_paid(
    qtbot: QtBot, ui_env: UiEnv, view: QueueView
) -> None:
    (paid,) = interrupted(ui_env)
    ui_env.sim.script("apiframe.poll", ["malformed"] * (ui_env.engine.config.max_protocol_errors
                                                       + 1))
    (free,) = run_async(qtbot, ui_env.controller.submit(SPEC))
    qtbot.waitUntil(lambda: ui_env.rt.library.job(free.id).state is JobState.FAILED,
                    timeout=15_000)
    qtbot.waitUntil(lambda: view.model.row_of(paid.id) is not None
                    and view.model.job(view.model.row_of(free.id) or 0).state
                    is JobState.FAILED, timeout=5000)
    select(view, paid.id, free.id)
    view.retry_action.trigger()
    box = question(qtbot, view)
    assert "Retry this job?" in box.text()
    assert "other selected job continues" in box.informativeText()
    qtbot.waitUntil(lambda: ui_env.rt.library.job(free.id).state is JobState.COMPLETED,
                    timeout=15_000)
    with qtbot.waitSignal(box.finished, timeout=5000):
        box.reject()
    assert ui_env.rt.library.job(paid.id).state is JobState.INTERRUPTED
    assert ui_env.sim.stats.submits["apiframe"] == 1


# ---------------------------------------------------------------------- composer


@pytest.fixture
def composer(qtbot: QtBot, ui_env: UiEnv) -> Composer:
    widget = Composer(ui_env.controller)
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_the_count_is_capped_at_the_core_maximum(composer: Composer) -> None:
    assert composer.count_spin.maximum() == MAX_COUNT
    composer.count_spin.setValue(MAX_COUNT + 5)
    assert composer.count_spin.value() == MAX_COUNT


def test_the_cost_follows_count_model_and_resolution(composer: Composer) -> None:
    c = composer
    pro = GEMINI.model("gemini-3-pro-image-preview")
    flash = GEMINI.model("gemini-2.5-flash-image")
    assert c.select_provider("gemini") and c.select_model(pro.model)
    c.resolution_combo.setCurrentText("1K")
    c.count_spin.setValue(4)
    assert c.cost_label.text() == f"4 images · about ${4 * pro.price['1K']:.2f}"
    c.resolution_combo.setCurrentText("4K")
    assert c.cost_label.text() == f"4 images · about ${4 * pro.price['4K']:.2f}"
    c.select_model(flash.model)
    c.count_spin.setValue(1)
    assert c.cost_label.text() == f"1 image · about ${flash.price[None]:.3f}"
    # Apiframe reports its cost after the job: no price is made up
    c.select_provider("apiframe")
    c.count_spin.setValue(3)
    assert c.cost_label.text() == "3 images · cost reported by the provider"
    c.select_provider("demo")
    assert "$" not in c.cost_label.text() and "no cost" in c.cost_label.text()


def test_a_large_count_is_confirmed_with_its_total(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer
) -> None:
    c = composer
    pro = GEMINI.model("gemini-3-pro-image-preview")
    c.select_provider("gemini")
    c.select_model(pro.model)
    c.resolution_combo.setCurrentText("2K")
    c.count_spin.setValue(CONFIRM_COUNT + 1)
    c.set_prompt("a row of lighthouses")
    assert c.queue() is None
    qtbot.waitUntil(lambda: c.count_question is not None and c.count_question.isVisible(),
                    timeout=5000)
    box = c.count_question
    assert box is not None
    total = f"${(CONFIRM_COUNT + 1) * pro.price['2K']:.2f}"
    assert f"Queue {CONFIRM_COUNT + 1} images?" in box.text()
    assert f"About {total} in total" in box.informativeText()
    with qtbot.waitSignal(box.finished, timeout=5000):
        button(box, QMessageBox.ButtonRole.RejectRole).click()  # type: ignore[attr-defined]
    assert ui_env.rt.library.jobs() == []

    c.queue_button.click()
    qtbot.waitUntil(lambda: c.count_question is not None and c.count_question.isVisible(),
                    timeout=5000)
    box = c.count_question
    assert box is not None
    with qtbot.waitSignal(c.submitted, timeout=10_000) as submitted:
        button(box, QMessageBox.ButtonRole.AcceptRole).click()  # type: ignore[attr-defined]
    assert len(submitted.args[0]) == CONFIRM_COUNT + 1


def test_up_to_the_threshold_and_demo_queue_without_a_question(
    qtbot: QtBot, ui_env: UiEnv, composer: Composer
) -> None:
    c = composer
    c.set_prompt("a quiet harbour")
    c.select_provider("apiframe")
    c.count_spin.setValue(CONFIRM_COUNT)
    task = c.queue()
    assert task is not None and c.count_question is None
    assert len(run_async(qtbot, task)) == CONFIRM_COUNT
    c.select_provider("demo")
    c.count_spin.setValue(MAX_COUNT)  # costs nothing: nothing to confirm
    task = c.queue()
    assert task is not None and c.count_question is None
    assert len(run_async(qtbot, task)) == MAX_COUNT


# ---------------------------------------------------------------------- offline


def test_offline_jobs_are_said_once_in_the_status_bar_and_it_clears(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    window = MainWindow(ui_env.controller)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    seen: list[bool] = []
    window.queue.offlineChanged.connect(seen.append)
    label = window.offline_label
    assert label.isHidden()

    jobs = stage(ui_env, 3, note=OFFLINE_NOTE)  # as the engine keeps them: queued, noted
    qtbot.waitUntil(lambda: not label.isHidden(), timeout=5000)
    assert label.text() == OFFLINE_NOTE
    model = window.queue.model
    for job in jobs:
        row = model.row_of(job.id)
        assert row is not None and model.index(row, STATE).data() == OFFLINE_NOTE

    # more attempts, each a change of the jobs: the status bar says nothing new
    other = Library(ui_env.rt.paths)
    try:
        for job in jobs:
            other.update_job(job.id, OTHER, note=OFFLINE_NOTE, submit_attempts=1)
        qtbot.waitUntil(lambda: all(model.job(model.row_of(j.id) or 0).submit_attempts == 1
                                    for j in jobs), timeout=5000)
        assert seen == [True] and not label.isHidden()
        for job in jobs[:2]:  # the network is back for two of them
            other.update_job(job.id, OTHER, note=None, state=JobState.CANCELLED)
        qtbot.waitUntil(lambda: model.job(model.row_of(jobs[1].id) or 0).state
                        is JobState.CANCELLED, timeout=5000)
        assert seen == [True] and not label.isHidden()
        other.update_job(jobs[2].id, OTHER, note=None, state=JobState.CANCELLED)
    finally:
        other.close()
    qtbot.waitUntil(lambda: label.isHidden(), timeout=5000)
    assert seen == [True, False]
