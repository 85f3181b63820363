"""The job queue panel: a plain table view over JobsModel plus the queue's actions."""

from __future__ import annotations

import time

from PySide6.QtCore import QModelIndex, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from nbdesk.core.jobs import RETRYABLE, Job, JobState, RetryPlan
from nbdesk.ui.controller import Controller
from nbdesk.ui.queue_model import (
    COLUMNS,
    COST,
    ELAPSED,
    PROGRESS,
    PROMPT,
    PROVIDER,
    STATE,
    JobsModel,
    retry_text,
)

#: job events are applied to the table at most this often (ms)
FLUSH_MS = 250


class QueueView(QWidget):
    #: a completed job was double-clicked: show its image
    jobActivated = Signal(object)
    #: whether some job waits for the network (emitted when that changes, not per job)
    offlineChanged = Signal(bool)

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.model = JobsModel()
        self.table = QTableView(self)
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        header = self.table.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(PROMPT, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(PROVIDER, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(PROVIDER, 128)
        # fixed widths for the columns that change every second: sizing them to their
        # contents re-reads every row on each change
        # (narrow enough that the prompt keeps ~100 px in the panel's default 520 px)
        for col, width in ((STATE, 96), (ELAPSED, 64), (PROGRESS, 60), (COST, 52)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(col, width)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._menu)
        self.table.doubleClicked.connect(self._activated)
        self.table.selectionModel().selectionChanged.connect(self._update_actions)

        self.cancel_action = self._action("Cancel", "Cancel the selected jobs", self.cancel,
                                          QKeySequence("Ctrl+Backspace"))
        self.retry_action = self._action("Retry", "Run failed or interrupted jobs again: "
                                         "a job the provider has is continued at no cost; "
                                         "a new paid submission is asked about first",
                                         self.retry, QKeySequence("Ctrl+R"))
        self.remove_action = self._action("Remove", "Remove finished jobs from the list "
                                          "(their images stay in the library)", self.remove,
                                          QKeySequence("Ctrl+Shift+Backspace"))
        self.cancel_all_action = self._action("Cancel all", "Cancel every unfinished job",
                                              controller.cancel_all)
        self.pause_action = self._action("Pause queue", "Hold queued jobs (jobs already at "
                                         "the provider carry on)", None)
        self.pause_action.setCheckable(True)
        self.pause_action.toggled.connect(controller.set_paused)

        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("<b>Queue</b>")
        bar.addWidget(self.title)
        bar.addStretch(1)
        for action in (self.cancel_action, self.retry_action, self.remove_action,
                       self.cancel_all_action, self.pause_action):
            button = QToolButton(self)
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            bar.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.table, 1)

        # Job events are applied at most every FLUSH_MS (the first one after a quiet
        # spell at once): with hundreds of jobs in flight, one repaint of the table per
        # event kept the GUI thread busy.
        self._pending: dict[str, Job] = {}
        self._offline = False  # as last announced by offlineChanged
        #: the open "this Retry costs money" question (one at a time)
        self.retry_question: QMessageBox | None = None
        self._last_flush = 0.0
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.timeout.connect(self.flush)
        controller.jobChanged.connect(self._on_job)
        controller.jobsReset.connect(self.reload)
        self._ticker = QTimer(self)
        self._ticker.setInterval(1000)
        self._ticker.timeout.connect(self.model.tick)
        self._ticker.start()
        self._update_actions()

    def _action(self, text: str, tip: str, slot: object,
                shortcut: QKeySequence | None = None) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip + (f" ({shortcut.toString()})" if shortcut else ""))
        action.setStatusTip(tip)
        if shortcut is not None:
            action.setShortcut(shortcut)
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        if callable(slot):
            action.triggered.connect(slot)
        self.addAction(action)
        return action

    # ------------------------------------------------------------------ data

    def reload(self) -> None:
        self.controller.then(self.controller.jobs(), self, self._set_jobs,
                             what="loading the queue")

    def _set_jobs(self, jobs: list[Job]) -> None:
        self.flush()  # events that came before: the fresh list supersedes them
        self.model.set_jobs(jobs)
        self._update_actions()
        self._update_title()
        self._update_offline()

    def _on_job(self, job: Job) -> None:
        self._pending[job.id] = job  # its latest state, in the order jobs first came
        if not self._flush_timer.isActive():
            wait = self._last_flush + FLUSH_MS / 1000 - time.monotonic()
            self._flush_timer.start(max(0, round(wait * 1000)))

    def flush(self) -> None:
        """Apply the job events received so far."""
        self._flush_timer.stop()
        self._last_flush = time.monotonic()
        jobs, self._pending = list(self._pending.values()), {}
        if jobs:
            self.model.upsert_many(jobs)
        self._update_actions()
        self._update_title()
        self._update_offline()

    def _update_offline(self) -> None:
        offline = self.model.offline_count() > 0
        if offline != self._offline:
            self._offline = offline
            self.offlineChanged.emit(offline)

    @property
    def offline(self) -> bool:
        """Some job waits for the network."""
        return self._offline

    def _update_title(self) -> None:
        active = sum(1 for j in self.model.jobs() if j.state.active)
        self.title.setText(f"<b>Queue</b> — {active} running" if active else "<b>Queue</b>")

    def selected_jobs(self) -> list[Job]:
        rows = {ix.row() for ix in self.table.selectionModel().selectedRows(STATE)}
        return [self.model.job(r) for r in sorted(rows)]

    def _update_actions(self) -> None:
        jobs = self.selected_jobs()
        self.cancel_action.setEnabled(any(j.state.active or j.state is JobState.INTERRUPTED
                                          for j in jobs))
        self.retry_action.setEnabled(any(j.state in RETRYABLE for j in jobs))
        self.remove_action.setEnabled(any(j.state.finished or j.state is JobState.CANCELLED
                                          for j in jobs))
        self.cancel_all_action.setEnabled(any(j.state.active for j in self.model.jobs()))

    # ------------------------------------------------------------------ actions

    def cancel(self) -> None:
        ids = [j.id for j in self.selected_jobs()
               if j.state.active or j.state is JobState.INTERRUPTED]
        self.controller.cancel(ids)

    def retry(self) -> None:
        """Retry the selected jobs: those the provider has go on at once (no new
        payment); a new paid submission is asked about first, unless the user said
        not to ask again."""
        ids = [j.id for j in self.selected_jobs() if j.state in RETRYABLE]
        if ids and self.retry_question is None:
            self.controller.then(self.controller.retry_plans(ids), self,  # read fresh
                                 self._retry, what="retrying jobs")

    def _retry(self, plans: list[tuple[Job, RetryPlan]]) -> None:
        if self.retry_question is not None:
            return
        free = [job.id for job, plan in plans if not self.controller.retry_costs(job, plan)]
        paid = [(job, plan) for job, plan in plans if self.controller.retry_costs(job, plan)]
        if free:
            self.controller.retry(free)
        if not paid:
            return
        if not self.controller.settings.confirm_paid_retry:
            self.controller.retry([job.id for job, _ in paid], paid_ok=True)
            return
        self._ask_paid_retry(paid, continued=len(free))

    def _ask_paid_retry(self, paid: list[tuple[Job, RetryPlan]], continued: int) -> None:
        """The question, non-blocking (``open``: a nested event loop would re-enter the
        asyncio loop); the answer arrives by ``finished``."""
        n = len(paid)
        billed = sum(1 for _, plan in paid if plan is RetryPlan.RESUBMIT)
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Retry costs money")
        box.setText(f"Retry {n} jobs? Each will be a new paid submission." if n != 1 else
                    "Retry this job? It will be a new paid submission.")
        details = []
        if billed:
            details.append(
                ("The provider may already have billed its first attempt (it was "
                 "interrupted before the answer came, or the provider failed it).")
                if n == 1 else
                (f"For {billed} of them the provider may already have billed the first "
                 "attempt (interrupted before the answer came, or failed by the "
                 "provider)."))
        if continued:
            details.append(
                f"The {continued} other selected jobs continue at the provider — no new "
                "payment — and are retried already." if continued != 1 else
                "The other selected job continues at the provider — no new payment — and "
                "is retried already.")
        box.setInformativeText("\n\n".join(details))
        retry = box.addButton(f"Retry and pay ({n})" if n != 1 else "Retry and pay",
                              QMessageBox.ButtonRole.AcceptRole)
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(cancel)
        box.setEscapeButton(cancel)
        check = QCheckBox("Don't ask again", box)  # (kept: the box does not own it for Python)
        check.setToolTip("Retry a new paid submission without asking (Settings can turn "
                         "the question back on)")
        box.setCheckBox(check)
        ids = [job.id for job, _ in paid]

        def answered() -> None:
            self.retry_question = None
            box.deleteLater()
            if box.clickedButton() is not retry:
                return  # cancelled: nothing is sent, nothing changes
            if check.isChecked():
                self.controller.update_settings(confirm_paid_retry=False)
            self.controller.retry(ids, paid_ok=True)

        box.finished.connect(answered)
        self.retry_question = box
        box.open()

    def remove(self) -> None:
        ids = {j.id for j in self.selected_jobs() if not j.state.active}
        for job_id in ids:
            self._pending.pop(job_id, None)
        self.model.remove_ids(ids)
        self.controller.remove(sorted(ids))
        self._update_actions()

    def _activated(self, index: QModelIndex) -> None:
        job = self.model.job(index.row())
        if job.state is JobState.COMPLETED:
            self.jobActivated.emit(job)

    def _menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        jobs = self.selected_jobs()
        for action in (self.cancel_action, self.retry_action, self.remove_action):
            menu.addAction(action)
            if action is self.retry_action and len(jobs) == 1 and retry_text(jobs[0]):
                said = menu.addAction(f"    {retry_text(jobs[0])}")  # what Retry does
                said.setEnabled(False)
        if len(jobs) == 1 and jobs[0].error:
            menu.addSeparator()
            menu.addAction("Copy error message").triggered.connect(
                lambda: _copy(jobs[0].error or ""))
        menu.popup(self.table.viewport().mapToGlobal(pos))


def _copy(text: str) -> None:
    from PySide6.QtWidgets import QApplication

    QApplication.clipboard().setText(text)
