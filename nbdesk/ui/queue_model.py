"""A Qt table model over the engine's jobs: engine events become row changes.

Newest jobs first. Rows are keyed by job id; an event for a known job updates its row,
an unknown one is inserted at the top. ``set_jobs`` replaces everything (after another
process changed the database).
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from nbdesk.core.jobs import Job, JobState

COLUMNS = ("State", "Prompt", "Provider / model", "Elapsed", "Progress", "Cost")
STATE, PROMPT, PROVIDER, ELAPSED, PROGRESS, COST = range(len(COLUMNS))
JobRole = Qt.ItemDataRole.UserRole + 1
#: the roles data() answers (plain ints: a set lookup, no enum comparisons)
_ANSWERED = frozenset(int(r) for r in (
    Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.ForegroundRole,
    Qt.ItemDataRole.TextAlignmentRole, JobRole))
Index = QModelIndex | QPersistentModelIndex

_STATE_COLOURS = {
    JobState.COMPLETED: QColor("#2e9d57"),
    JobState.FAILED: QColor("#d64541"),
    JobState.INTERRUPTED: QColor("#d98b1f"),
    JobState.CANCELLED: None,
}


def state_text(job: Job) -> str:
    text = job.state.value
    if job.cancel_requested and job.state.active:
        return "cancelling"
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


class JobsModel(QAbstractTableModel):
    def __init__(self) -> None:
        super().__init__()
        self._jobs: list[Job] = []
        self._rows: dict[str, int] = {}

    # -------------------------------------------------------------- updates

    def set_jobs(self, jobs: list[Job]) -> None:
        self.beginResetModel()
        self._jobs = sorted(jobs, key=lambda j: j.created_at, reverse=True)
        self._reindex()
        self.endResetModel()

    def _reindex(self) -> None:
        self._rows = {j.id: i for i, j in enumerate(self._jobs)}

    def upsert(self, job: Job) -> None:
        self.upsert_many([job])

    def upsert_many(self, jobs: list[Job]) -> None:
        """Apply job events in the order they came (at most one per job): known rows
        change in one signal over their span, new jobs go on top (the last one first),
        in one insertion."""
        changed: list[int] = []
        new: list[Job] = []
        for job in jobs:
            row = self._rows.get(job.id)
            if row is None:
                new.append(job)
            else:
                self._jobs[row] = job
                changed.append(row)
        if changed:
            self.dataChanged.emit(self.index(min(changed), 0),
                                  self.index(max(changed), len(COLUMNS) - 1))
        if new:
            self.beginInsertRows(QModelIndex(), 0, len(new) - 1)
            self._jobs[0:0] = reversed(new)
            self._reindex()
            self.endInsertRows()

    def remove_ids(self, ids: set[str]) -> None:
        for row in sorted((self._rows[i] for i in ids if i in self._rows), reverse=True):
            self.beginRemoveRows(QModelIndex(), row, row)
            del self._jobs[row]
            self.endRemoveRows()
        self._reindex()

    def tick(self) -> None:
        """Refresh the elapsed time of jobs still running: one change signal over their
        span (one per row made the view re-measure every row per row: quadratic)."""
        rows = [row for row, job in enumerate(self._jobs) if job.state.active]
        if rows:
            self.dataChanged.emit(self.index(rows[0], ELAPSED), self.index(rows[-1], ELAPSED),
                                  [Qt.ItemDataRole.DisplayRole])

    # -------------------------------------------------------------- reading

    def job(self, row: int) -> Job:
        return self._jobs[row]

    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def row_of(self, job_id: str) -> int | None:
        return self._rows.get(job_id)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        # The table's delegate asks for a dozen roles per cell on every repaint; most
        # have no answer here: say so before anything else (and before any call to C++).
        if role not in _ANSWERED or not index.isValid():
            return None
        job = self._jobs[index.row()]
        col = index.column()
        if role == JobRole:
            return job
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [job.prompt]
            if job.error:
                lines.append(f"Error: {job.error}")
            if job.note:
                lines.append(job.note)
            if job.remote_id:
                lines.append(f"Remote id: {job.remote_id}")
            lines.append(f"Job id: {job.id}")
            return "\n".join(lines)
        if role == Qt.ItemDataRole.ForegroundRole and col == STATE:
            colour = _STATE_COLOURS.get(job.state)
            if colour is None and job.state is JobState.CANCELLED:
                return QApplication.palette().color(QPalette.ColorRole.PlaceholderText)
            return colour
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (ELAPSED, PROGRESS, COST):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if col == STATE:
            return state_text(job)
        if col == PROMPT:
            return " ".join(job.prompt.split())[:160]
        if col == PROVIDER:
            return f"{job.provider_label} · {job.model}"
        if col == ELAPSED:
            return elapsed_text(job)
        if col == PROGRESS:
            if job.state is JobState.COMPLETED:
                return "100%"
            return "" if job.progress is None else f"{job.progress:.0f}%"
        if col == COST:
            return "" if job.cost is None else f"${job.cost:.3f}"
        return None
