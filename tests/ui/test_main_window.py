"""The whole window on a fresh NBDESK_HOME: prompt → Ctrl+Enter → queue → viewer → library,
a dropped reference that reaches the provider, and an offline restart."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from nbdesk.core.jobs import JobState
from nbdesk.ui.main_window import MainWindow
from nbdesk.ui.queue_model import STATE
from tests.ui.conftest import UiEnv


def open_window(qtbot: QtBot, env: UiEnv) -> MainWindow:
    window = MainWindow(env.controller)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


def queue_states(window: MainWindow) -> list[str]:
    model = window.queue.model
    return [str(model.index(r, STATE).data()) for r in range(model.rowCount())]


def drop_files(widget: object, paths: list[Path]) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)  # type: ignore[arg-type]
    assert enter.isAccepted()
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)  # type: ignore[arg-type]


def test_first_start_shows_what_to_do(qtbot: QtBot, ui_env: UiEnv) -> None:
    window = open_window(qtbot, ui_env)
    assert window.viewer_stack.currentWidget() is window.welcome
    assert "Demo" in window.welcome.text() and "Settings" in window.welcome.text()
    qtbot.waitUntil(window.library.is_empty_state, timeout=5000)
    qtbot.waitUntil(lambda: "key from NBDESK_APIFRAME_API_KEY"
                    in window.key_labels["apiframe"].text(), timeout=5000)


def test_prompt_to_library_then_offline_restart(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    window = open_window(qtbot, ui_env)
    composer = window.composer
    composer.select_provider("apiframe")
    composer.prompt.setFocus()
    QTest.keyClicks(composer.prompt, "a lighthouse in the fog")
    with qtbot.waitSignal(ui_env.controller.itemsAdded, timeout=20_000) as added:
        QTest.keyClick(composer.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: queue_states(window) == ["completed"], timeout=5000)
    (first_id,) = added.args[0]
    qtbot.waitUntil(lambda: window.library.visible_ids() == [first_id], timeout=5000)

    # open it from the queue, as a user would, and see it in the viewer
    with qtbot.waitSignal(window.viewer.imageLoaded, timeout=10_000):
        window.queue.table.doubleClicked.emit(window.queue.model.index(0, STATE))
    assert window.viewer_stack.currentWidget() is window.viewer
    assert window.viewer.current_id == first_id
    assert window.viewer.image() is not None

    # a reference dropped from the file manager is sent to the provider
    ref = tmp_path / "sketch.png"
    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (240, 200, 30)).save(buf, "PNG")
    ref.write_bytes(buf.getvalue())
    tray = composer.tray
    with qtbot.waitSignal(tray.changed, timeout=5000):
        drop_files(tray.strip.viewport(), [ref])
    assert tray.sources() == [str(ref)]
    composer.set_prompt("the same lighthouse, in this colour")
    with qtbot.waitSignal(ui_env.controller.itemsAdded, timeout=20_000) as added:
        QTest.keyClick(composer.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    record = ui_env.sim.stats.jobs[-1]
    assert record.n_refs == 1
    assert record.ref_sha256s[0] == hashlib.sha256(ref.read_bytes()).hexdigest()
    (second_id,) = added.args[0]
    window.close()

    # Start again with the provider gone: browse, search and open offline.
    ui_env.close()
    ui_env.sim.stop()
    again = UiEnv(qtbot, ui_env.home, ui_env.sim)
    again.start()
    try:
        window = open_window(qtbot, again)
        qtbot.waitUntil(lambda: sorted(window.library.visible_ids())
                        == sorted([first_id, second_id]), timeout=5000)
        window.library.search.setText("colour")
        qtbot.waitUntil(lambda: window.library.visible_ids() == [second_id], timeout=5000)
        with qtbot.waitSignal(window.viewer.imageLoaded, timeout=10_000):
            window.library.itemActivated.emit(second_id)
        assert window.viewer.current_item is not None
        assert window.viewer.current_item.prompt == "the same lighthouse, in this colour"
        assert [j.state for j in again.rt.library.jobs()] == [JobState.COMPLETED] * 2
        window.close()
    finally:
        again.close()
        ui_env.close = lambda: None  # type: ignore[method-assign]  # closed above


def test_layout_is_restored(qtbot: QtBot, ui_env: UiEnv) -> None:
    window = open_window(qtbot, ui_env)
    window.resize(1300, 820)
    window.split.setSizes([480, 820])
    sizes = window.split.sizes()
    window.close()
    again = MainWindow(ui_env.controller)
    qtbot.addWidget(again)
    again.show()
    qtbot.waitExposed(again)
    assert (again.width(), again.height()) == (1300, 820)
    assert again.split.sizes() == sizes


def test_errors_reach_the_message_bar_and_undo_works(qtbot: QtBot, ui_env: UiEnv) -> None:
    window = open_window(qtbot, ui_env)
    window.composer.select_provider("apiframe")
    ui_env.sim.config.keys = {"apiframe": {"someone-else"}}
    window.composer.set_prompt("will be refused")
    window.composer.queue()
    qtbot.waitUntil(lambda: window.messages.isVisible() and window.messages.level == "error",
                    timeout=15_000)
    assert "API key" in window.messages.label.text()
    assert "ui-frame-key" not in window.messages.label.text()
