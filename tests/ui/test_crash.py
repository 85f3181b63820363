"""The crash dialog: an uncaught exception is reported, logged and shown, keys masked."""

from __future__ import annotations

import sys
from pathlib import Path

from pytestqt.qtbot import QtBot

from nbdesk.core.secrets import RedactingFilter
from nbdesk.ui.crash import CrashHandler

KEY = "sk-live-crash-test-0123456789"


def test_uncaught_exception_opens_a_dialog_without_the_key(
    qtbot: QtBot, tmp_path: Path
) -> None:
    RedactingFilter.register(KEY)
    handler = CrashHandler(tmp_path / "logs")
    handler.install()
    try:
        assert sys.excepthook == handler.handle
        try:
            raise RuntimeError(f"request failed with header X-API-Key: {KEY}")
        except RuntimeError as exc:
            handler.handle(type(exc), exc, exc.__traceback__)
        qtbot.waitUntil(lambda: len(handler.dialogs) == 1, timeout=3000)
        box = handler.dialogs[0]
        shown = box.text() + box.informativeText() + box.detailedText()
        assert "RuntimeError" in shown and "***" in shown
        assert KEY not in shown
        (report,) = handler.reports
        text = report.read_text()
        assert "Traceback" in text and KEY not in text
        box.close()
    finally:
        handler.uninstall()
        RedactingFilter.unregister(KEY)
    assert sys.excepthook != handler.handle
