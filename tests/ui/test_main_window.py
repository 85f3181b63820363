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

from nbdesk.core.jobs import JobSpec, JobState
from nbdesk.ui.main_window import DEFAULT_SIZE, MainWindow, default_size
from nbdesk.ui.queue_model import STATE
from tests.ui.conftest import UiEnv, run_async


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


def test_the_first_size_leaves_room_on_a_small_screen() -> None:
    assert default_size((1920, 1160)) == DEFAULT_SIZE == (1360, 860)
    assert default_size((1440, 978)) == DEFAULT_SIZE
    width, height = default_size((1366, 740))  # a 1366x768 laptop under a 28 px panel
    assert width < 1366 - 40 and height < 740 - 60  # a frame and a title bar fit around it


SMALL_SCREEN = """
import asyncio, json, sys
import qasync
from PySide6.QtWidgets import QApplication
from nbdesk.core.runtime import Runtime
from nbdesk.ui.controller import Controller
from nbdesk.ui.main_window import MainWindow, apply_app_style

app = QApplication([sys.argv[0]])
app.setQuitOnLastWindowClosed(False)  # as in the app: the engine stops first
apply_app_style(app)
rt = Runtime.open()
loop = qasync.QEventLoop(app)
asyncio.set_event_loop(loop)

async def run():
    async with rt.engine() as engine:
        window = MainWindow(Controller(rt, engine))  # every panel
        window.show()
        frame, screen = window.frameGeometry(), window.screen().availableGeometry()
        print(json.dumps({"frame": frame.getRect(), "screen": screen.getRect(),
                          "minimum": window.minimumSizeHint().toTuple(),
                          "size": window.size().toTuple()}))
        window.close()

with loop:
    loop.run_until_complete(run())
rt.close()
"""


def test_the_whole_window_fits_a_1366x768_screen(tmp_path: Path) -> None:
    """A new user's window on a small laptop screen, every panel built: inside the
    screen, and no smaller than what its panels need."""
    import json
    import os
    import subprocess
    import sys

    config = tmp_path / "small-screen.json"
    config.write_text(json.dumps({"screens": [{
        "name": "laptop", "x": 0, "y": 0, "width": 1366, "height": 768,
        "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}]}))
    env = {**os.environ, "NBDESK_HOME": str(tmp_path / "home"),
           "QT_QPA_PLATFORM": f"offscreen:configfile={config}"}
    result = subprocess.run([sys.executable, "-c", SMALL_SCREEN], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    x, y, w, h = seen["frame"]
    sx, sy, sw, sh = seen["screen"]
    assert (sw, sh) == (1366, 768)
    assert sx <= x and sy <= y and x + w <= sx + sw and y + h <= sy + sh
    assert seen["size"][0] >= seen["minimum"][0] and seen["size"][1] >= seen["minimum"][1]


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


def test_one_key_lookup_shared_by_status_bar_composer_and_settings(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    """The status bar, the composer and the settings dialog read one key status: one
    keychain lookup per provider at start, none when the dialog opens, and a key saved
    in the dialog shows in the status bar and the composer at once."""
    from nbdesk.api.capabilities import PROVIDERS
    from nbdesk.core.secrets import SecretStore
    from nbdesk.ui.settings_dialog import SettingsDialog
    from tests.ui.test_key_status import CountingKeyring

    backend = CountingKeyring()
    ui_env.rt.secrets = SecretStore(environ={}, backend=backend)
    ui_env.rt.settings_service.update(save=False, demo_when_no_key=False)
    window = open_window(qtbot, ui_env)
    labels = window.key_labels
    qtbot.waitUntil(lambda: all("no key" in label.text() for label in labels.values()),
                    timeout=5000)
    composer = window.composer
    assert composer.provider_choice() == "apiframe"
    qtbot.waitUntil(lambda: "No API key for Apiframe" in composer.hint_text())
    assert sorted(backend.reads) == sorted(PROVIDERS)  # once each, not once per reader

    window.open_settings()
    dialog = window._settings_dialog
    assert isinstance(dialog, SettingsDialog)
    assert dialog.key_status("apiframe").startswith("No key stored")  # known already
    # (the start's reading of the keychain's name may still be under way: wait it out)
    qtbot.waitUntil(lambda: not dialog.busy(), timeout=5000)
    assert sorted(backend.reads) == sorted(PROVIDERS)  # opening the dialog read nothing

    row = dialog.key_rows["apiframe"]
    row.field.setText("frame-key-2468")
    with qtbot.waitSignal(dialog.keysChanged, timeout=5000):
        row.save.click()
    qtbot.waitUntil(lambda: labels["apiframe"].text() == "Apiframe: key ✓", timeout=5000)
    assert composer.hint_text() == ""
    qtbot.waitUntil(lambda: dialog.key_status("apiframe").startswith("Stored in"))
    assert backend.reads.count("apiframe") == 2  # the start's, and the one after saving
    dialog.close()


def test_the_spend_label_follows_the_library_and_coalesces_its_sums(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    """Finished jobs add to 'Spent'; calls while a sum runs only mark that one more sum
    is wanted, and the label ends at the library's total."""
    window = open_window(qtbot, ui_env)
    c = ui_env.controller
    with qtbot.waitSignal(c.itemsAdded, timeout=15_000):
        run_async(qtbot, c.submit(JobSpec("apiframe", "nano-banana", "a paid lighthouse")))
    total = run_async(qtbot, c.total_cost())
    assert total > 0
    qtbot.waitUntil(lambda: window.spend_label.text() == f"Spent: ${total:.2f}",
                    timeout=5000)
    window.spend_label.setText("")
    qtbot.waitUntil(lambda: not window._spend_running, timeout=5000)
    window.refresh_spend()
    assert window._spend_running
    for _ in range(3):  # while the sum runs: one more sum, once
        window.refresh_spend()
    assert window._spend_again
    qtbot.waitUntil(lambda: not window._spend_running, timeout=5000)
    assert window.spend_label.text() == f"Spent: ${total:.2f}" and not window._spend_again
