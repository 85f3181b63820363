"""The last line of defence: an uncaught exception is logged, written to a crash report
and shown in a dialog — with every known API key masked — and the app keeps running."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

if TYPE_CHECKING:  # (made when a dialog is shown: the handler is installed before the
    # window's first screen, which has no message box)
    from PySide6.QtWidgets import QMessageBox

log = logging.getLogger("nbdesk.crash")


def report_text(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> str:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    return _masked(text)


def _masked(text: str) -> str:
    """``text`` with every known key masked. (The key store's module, and
    ``concurrent.futures`` with it, loads here: the handler is installed before the
    window's first screen, which needs neither.)"""
    from nbdesk.core.secrets import RedactingFilter, redact

    return redact(text, RedactingFilter.known())


class CrashHandler:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.dialogs: list[QMessageBox] = []
        self.reports: list[Path] = []
        self._previous = sys.excepthook

    def install(self) -> None:
        sys.excepthook = self.handle

    def uninstall(self) -> None:
        sys.excepthook = self._previous

    def handle(self, exc_type: type[BaseException], exc: BaseException,
               tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self._previous(exc_type, exc, tb)
            return
        text = report_text(exc_type, exc, tb)
        log.error("uncaught exception:\n%s", text)
        path = self._write(text)
        # Show it from the event loop: never open a dialog from inside the failing frame.
        QTimer.singleShot(0, lambda: self._show(exc_type.__name__, str(exc), text, path))

    def _write(self, text: str) -> Path | None:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path = self.log_dir / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.txt"
            path.write_text(text, encoding="utf-8")
        except OSError:
            return None
        self.reports.append(path)
        return path

    def _show(self, name: str, message: str, text: str, path: Path | None) -> None:
        if QApplication.instance() is None:
            return
        from PySide6.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Icon.Critical, "nbdesk — unexpected error",
                          "Something went wrong inside nbdesk. Your jobs and library are "
                          "safe; the app keeps running.")
        masked = _masked(f"{name}: {message}")
        where = f"\n\nA report was saved to {path}" if path else ""
        box.setInformativeText(masked[:500] + where)
        box.setDetailedText(text)
        box.setModal(False)
        box.finished.connect(lambda _r: self.dialogs.remove(box) if box in self.dialogs
                             else None)
        self.dialogs.append(box)
        box.open()
