"""A Qt table model over the engine's jobs: engine events become row changes."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from nbdesk.core.jobs import Job

COLUMNS = ("State", "Prompt", "Provider / model", "Elapsed", "Progress", "Cost")
Index = QModelIndex | QPersistentModelIndex


class JobsModel(QAbstractTableModel):
    def __init__(self) -> None:
        super().__init__()
        self._jobs: list[Job] = []
        self._rows: dict[str, int] = {}

    def set_jobs(self, jobs: list[Job]) -> None:
        self.beginResetModel()
        self._jobs = list(jobs)
        self._rows = {j.id: i for i, j in enumerate(self._jobs)}
        self.endResetModel()

    def upsert(self, job: Job) -> None:
        row = self._rows.get(job.id)
        if row is None:
            row = len(self._jobs)
            self.beginInsertRows(QModelIndex(), row, row)
            self._jobs.append(job)
            self._rows[job.id] = row
            self.endInsertRows()
        else:
            self._jobs[row] = job
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))

    def job(self, row: int) -> Job:
        return self._jobs[row]

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: Index, role: int = 0) -> Any:
        if not index.isValid() or role not in (Qt.ItemDataRole.DisplayRole,
                                               Qt.ItemDataRole.ToolTipRole):
            return None
        job = self._jobs[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.ToolTipRole:
            return job.error or job.note or job.prompt
        if col == 0:
            return job.state.value + (" (waiting)" if job.note else "")
        if col == 1:
            return " ".join(job.prompt.split())[:120]
        if col == 2:
            return f"{job.provider_label} / {job.model}"
        if col == 3:
            end = job.finished_at or time.time()
            return f"{max(0.0, end - job.created_at):.0f} s"
        if col == 4:
            return "" if job.progress is None else f"{job.progress:.0f}%"
        if col == 5:
            return "" if job.cost is None else f"{job.cost:.3f}"
        return None
