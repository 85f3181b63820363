"""A Qt table model over the engine's jobs: engine events become row changes.

Newest jobs first. Rows are keyed by job id; an event for a known job updates its row,
an unknown one is inserted at the top. ``set_jobs`` replaces everything (after another
process changed the database).
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QPalette, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QApplication

from nbdesk.core.jobs import OFFLINE_NOTE, RETRYABLE, Job, JobState, RetryPlan
from nbdesk.ui.controller import Controller
from nbdesk.ui.model_rows import insert_rows, quiet_reset, remove_rows

COLUMNS = ("State", "Prompt", "Provider / model", "Elapsed", "Progress", "Cost")
STATE, PROMPT, PROVIDER, ELAPSED, PROGRESS, COST = range(len(COLUMNS))
JobRole = Qt.ItemDataRole.UserRole + 1

_STATE_COLOURS = {
    JobState.COMPLETED: QColor("#2e9d57"),
    JobState.FAILED: QColor("#d64541"),
    JobState.INTERRUPTED: QColor("#d98b1f"),
    JobState.CANCELLED: None,
}


#: What Retry does, as the queue's tooltip and the retry question say it.
RETRY_TEXTS = {
    RetryPlan.CONTINUE: "Retry continues the job at the provider — no new payment",
    RetryPlan.SUBMIT: "Retry is a new paid submission",
    RetryPlan.RESUBMIT: "Retry is a new paid submission — the provider may already have "
                        "billed the first attempt",
}
DEMO_RETRY_TEXT = "Retry runs it again (Demo: no cost)"


def is_offline(job: Job) -> bool:
    """The job waits for the network (sent when it is back)."""
    return job.note == OFFLINE_NOTE and job.state.active


def retry_text(job: Job) -> str:
    """What Retry would do with ``job``, in one line ("" when it cannot be retried)."""
    if job.state not in RETRYABLE:
        return ""
    plan = Controller.retry_plan(job)
    if not Controller.retry_costs(job, plan) and plan.paid:
        return DEMO_RETRY_TEXT
    return RETRY_TEXTS[plan]


def state_text(job: Job) -> str:
    text = job.state.value
    if job.cancel_requested and job.state.active:
        return "cancelling"
    if is_offline(job):
        return OFFLINE_NOTE
    if job.note and job.state.active:
        return f"{text} · waiting"
    return text


def elapsed_text(job: Job, now: float | None = None) -> str:
    end = job.finished_at or (time.time() if now is None else now)
    seconds = max(0, int(end - job.created_at))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


#: rows given their cells at once by ``set_jobs``; the rest follow this many per pass of
#: the event loop (a row's cells: ~70 us; 10,000 jobs in one go froze the window 0.7 s)
FILL_CHUNK = 200


class JobsModel(QStandardItemModel):
    """The rows live in C++ (QStandardItemModel), with the texts the table shows: the
    table paints without calling Python. (As a Python model, each repaint of 15 visible
    rows asked Python ~1,000 times: rowCount and columnCount for every index, a dozen
    roles per cell; with 200 jobs running that was a quarter of the GUI thread.)

    ``_jobs`` keeps the Job of each row; rows change only through ``set_jobs``,
    ``upsert_many`` and ``remove_ids``, which keep the two in step. A cell's text is
    set only when it changed, so a repaint covers what changed.

    ``set_jobs`` makes every row at once but gives the rows their cells FILL_CHUNK at a
    time, from the top: the rows from ``_fill_from`` down are still blank (``filling()``),
    and their jobs' changes wait in ``_jobs`` until their turn.
    """

    def __init__(self) -> None:
        super().__init__(0, len(COLUMNS))
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self._jobs: list[Job] = []
        self._rows: dict[str, int] = {}
        #: job id -> (texts per column, tooltip, state colour) as shown
        self._shown: dict[str, tuple[tuple[str, ...], str, QColor | None]] = {}
        self._fill_from = 0  # rows from here on have no cells yet
        self._offline: set[str] = set()  # ids of the jobs waiting for the network
        self._fill_timer = QTimer(self)
        self._fill_timer.setSingleShot(True)
        self._fill_timer.setInterval(0)
        self._fill_timer.timeout.connect(self._fill_more)

    # -------------------------------------------------------------- updates

    def set_jobs(self, jobs: list[Job]) -> None:
        with quiet_reset(self):
            self._jobs = sorted(jobs, key=lambda j: j.created_at, reverse=True)
            self._offline = {j.id for j in self._jobs if is_offline(j)}
            self._reindex()
            self._shown = {}
            self.setRowCount(0)
            insert_rows(self, 0, len(self._jobs))
            self._fill_from = 0
            self._fill(FILL_CHUNK)

    def filling(self) -> bool:
        """True while rows made by ``set_jobs`` are still getting their cells."""
        return self._fill_from < len(self._jobs)

    def _fill(self, count: int) -> None:
        end = min(len(self._jobs), self._fill_from + count)
        for row in range(self._fill_from, end):
            self._make_cells(row)
            self._show(row, self._jobs[row])
        self._fill_from = end
        if self.filling():
            self._fill_timer.start()

    def _fill_more(self) -> None:
        self._fill(FILL_CHUNK)

    def _reindex(self) -> None:
        self._rows = {j.id: i for i, j in enumerate(self._jobs)}

    def upsert(self, job: Job) -> None:
        self.upsert_many([job])

    def upsert_many(self, jobs: list[Job]) -> None:
        """Apply job events in the order they came (at most one per job): known rows
        change the cells that changed, new jobs go on top (the last one first), in one
        insertion."""
        new: list[Job] = []
        for job in jobs:
            if is_offline(job):
                self._offline.add(job.id)
            else:
                self._offline.discard(job.id)
            row = self._rows.get(job.id)
            if row is None:
                new.append(job)
            else:
                self._jobs[row] = job
                if row < self._fill_from:  # (a blank row shows it when filled)
                    self._show(row, job)
        if new:
            new.reverse()
            self._jobs[0:0] = new
            self._fill_from += len(new)
            self._reindex()
            insert_rows(self, 0, len(new))
            for row, job in enumerate(new):
                self._make_cells(row)
                self._show(row, job)

    def _make_cells(self, row: int) -> None:
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for col in range(len(COLUMNS)):
            item = QStandardItem()
            item.setEditable(False)
            if col in (ELAPSED, PROGRESS, COST):
                item.setTextAlignment(right)
            self.setItem(row, col, item)

    def _show(self, row: int, job: Job) -> None:
        """Set the cells of ``row`` that differ from what it shows."""
        texts = row_texts(job)
        tooltip = tooltip_text(job)
        colour = state_colour(job)
        before = self._shown.get(job.id)
        self._shown[job.id] = (texts, tooltip, colour)
        for col, text in enumerate(texts):
            if before is None or before[0][col] != text:
                self.item(row, col).setText(text)
        if before is None or before[1] != tooltip:
            for col in range(len(COLUMNS)):
                self.item(row, col).setToolTip(tooltip)
        state = self.item(row, STATE)
        if before is None or before[2] != colour:
            state.setData(colour, Qt.ItemDataRole.ForegroundRole)
        state.setData(job, JobRole)

    def remove_ids(self, ids: set[str]) -> None:
        for row in sorted((self._rows[i] for i in ids if i in self._rows), reverse=True):
            job = self._jobs.pop(row)
            self._shown.pop(job.id, None)
            self._offline.discard(job.id)
            if row < self._fill_from:
                self._fill_from -= 1
            remove_rows(self, row, 1)
        self._reindex()

    def tick(self) -> None:
        """Refresh the elapsed time of jobs still running (only the cells whose text
        changed: the view repaints those; blank rows get theirs when filled)."""
        now = time.time()
        for row in range(self._fill_from):
            job = self._jobs[row]
            if not job.state.active:
                continue
            text = elapsed_text(job, now)
            texts, tooltip, colour = self._shown[job.id]
            if texts[ELAPSED] != text:
                self._shown[job.id] = (
                    (*texts[:ELAPSED], text, *texts[ELAPSED + 1:]), tooltip, colour)
                self.item(row, ELAPSED).setText(text)

    # -------------------------------------------------------------- reading

    def job(self, row: int) -> Job:
        return self._jobs[row]

    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def row_of(self, job_id: str) -> int | None:
        return self._rows.get(job_id)

    def offline_count(self) -> int:
        """How many jobs wait for the network."""
        return len(self._offline)


def row_texts(job: Job) -> tuple[str, ...]:
    """What each column shows for ``job``."""
    if job.state is JobState.COMPLETED:
        progress = "100%"
    else:
        progress = "" if job.progress is None else f"{job.progress:.0f}%"
    return (
        state_text(job),
        " ".join(job.prompt.split())[:160],
        f"{job.provider_label} · {job.model}",
        elapsed_text(job),
        progress,
        "" if job.cost is None else f"${job.cost:.3f}",
    )


def tooltip_text(job: Job) -> str:
    lines = [job.prompt]
    if job.error:
        lines.append(f"Error: {job.error}")
    if job.note:
        lines.append(job.note)
    retry = retry_text(job)
    if retry:
        lines.append(retry)
    if job.remote_id:
        lines.append(f"Remote id: {job.remote_id}")
    lines.append(f"Job id: {job.id}")
    return "\n".join(lines)


def state_colour(job: Job) -> QColor | None:
    """The State column's text colour (None: the palette's)."""
    colour = _STATE_COLOURS.get(job.state)
    if colour is None and job.state is JobState.CANCELLED:
        return QApplication.palette().color(QPalette.ColorRole.PlaceholderText)
    return colour
