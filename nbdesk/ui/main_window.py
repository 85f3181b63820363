"""The main window: a thin layer over the runtime and the engine."""

from __future__ import annotations

import asyncio

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPlainTextEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from nbdesk.api.base import InputError
from nbdesk.api.capabilities import DEMO, DEMO_PROVIDER, PROVIDERS
from nbdesk.core.connector import ConfigError
from nbdesk.core.engine import Engine
from nbdesk.core.jobs import Job, JobSpec
from nbdesk.core.runtime import Runtime
from nbdesk.ui.queue_model import JobsModel


class MainWindow(QMainWindow):
    closed = Signal()

    def __init__(self, rt: Runtime, engine: Engine) -> None:
        super().__init__()
        self.rt = rt
        self.engine = engine
        self.setWindowTitle("nbdesk")
        self.resize(1000, 700)
        central = QWidget(self)
        layout = QVBoxLayout(central)
        self.prompt = QPlainTextEdit(placeholderText="Describe the image… (Ctrl+Enter queues it)")
        self.prompt.setMaximumHeight(120)
        row = QHBoxLayout()
        self.provider = QComboBox()
        self.provider.addItem("Demo (offline simulator)", DEMO)
        for pid, caps in PROVIDERS.items():
            self.provider.addItem(caps.label, pid)
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self.generate)
        row.addWidget(QLabel("Provider:"))
        row.addWidget(self.provider)
        row.addStretch(1)
        row.addWidget(self.generate_button)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.jobs = JobsModel()
        self.jobs.set_jobs(rt.library.jobs())
        self.table = QTableView()
        self.table.setModel(self.jobs)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.prompt)
        layout.addLayout(row)
        layout.addWidget(self.message)
        layout.addWidget(self.table, 1)
        self.setCentralWidget(central)
        QShortcut(QKeySequence("Ctrl+Return"), self, self.generate)
        engine.subscribe(self.jobs.upsert)
        engine.on_external_change(self._reload)
        self._pending: set[asyncio.Task[list[Job]]] = set()

    def _reload(self) -> None:
        self.jobs.set_jobs(self.rt.library.jobs())

    def generate(self) -> None:
        choice = self.provider.currentData()
        demo = choice == DEMO
        provider = DEMO_PROVIDER if demo else str(choice)
        caps = PROVIDERS[provider]
        spec = JobSpec(provider=provider, model=caps.default_model.model,
                       prompt=self.prompt.toPlainText(), demo=demo)
        task = asyncio.ensure_future(self.engine.enqueue(spec))
        self._pending.add(task)
        task.add_done_callback(self._enqueued)

    def _enqueued(self, task: asyncio.Task[list[Job]]) -> None:
        self._pending.discard(task)
        exc = task.exception()
        if isinstance(exc, InputError | ConfigError):
            self.message.setText(str(exc))
            self.message.setStyleSheet("color: #c0392b;")
        elif exc is not None:
            self.message.setText(f"internal error: {exc}")
        else:
            self.message.setText("")
            self.prompt.clear()
            self.prompt.setFocus(Qt.FocusReason.OtherFocusReason)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.closed.emit()
        super().closeEvent(event)
