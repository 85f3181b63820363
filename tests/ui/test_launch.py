"""Start-up around the window: the app icon and desktop identity, and image files from the
command line ("Open with nbdesk") reaching the viewer or the reference tray."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from PySide6.QtCore import QSize
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from nbdesk.core.jobs import JobParams, JobSpec
from nbdesk.desktop import ICON_SIZES, icon_png
from nbdesk.ui.launch import app_icon, apply_identity, open_files
from tests.ui.conftest import UiEnv, run_async
from tests.ui.test_main_window import open_window


def test_the_app_has_its_icon_in_every_size_and_names_its_desktop_file(qapp: QApplication) -> None:
    icon = app_icon()
    assert {s.width() for s in icon.availableSizes()} == set(ICON_SIZES)
    apply_identity(qapp)
    assert QGuiApplication.desktopFileName() == "nbdesk"
    window_icon = QGuiApplication.windowIcon()
    assert not window_icon.isNull()
    # what a 16 px taskbar entry shows is the 16 px rendering, not a scaled-down 512
    fmt = QImage.Format.Format_ARGB32
    small = window_icon.pixmap(QSize(16, 16)).toImage().convertToFormat(fmt)
    assert small == QImage(str(icon_png(16))).convertToFormat(fmt)
    assert window_icon.actualSize(QSize(48, 48)) == QSize(48, 48)


def test_files_open_in_the_viewer_or_the_tray(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    window = open_window(qtbot, ui_env)
    controller = ui_env.controller
    messages: list[tuple[str, str]] = []
    controller.message.connect(lambda level, text: messages.append((level, text)))
    # one image in the library, made through the engine like any other
    with qtbot.waitSignal(controller.itemsAdded, timeout=20_000) as added:
        run_async(qtbot, controller.submit(JobSpec("apiframe", "nano-banana", "a kite",
                                                   JobParams())))
    (item_id,) = added.args[0]
    item = ui_env.rt.library.item(item_id)
    outside = tmp_path / "holiday photo.webp"
    Image.new("RGB", (80, 60), "teal").save(outside, "WEBP")
    missing = tmp_path / "gone.png"

    with qtbot.waitSignal(window.viewer.imageLoaded, timeout=10_000):
        opened = run_async(qtbot, open_files(window, [
            str(outside), item.path.as_uri(), str(missing)]))

    assert opened.viewer == [item_id]
    assert window.viewer_stack.currentWidget() is window.viewer
    assert window.viewer.current_id == item_id
    assert opened.references == [str(outside)]
    assert window.composer.tray.sources() == [str(outside)]
    assert opened.missing == [str(missing)]
    assert ("error", f"Cannot open {missing}: not a file") in messages
    window.close()


def test_a_file_that_is_not_an_image_is_refused_in_the_tray(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    window = open_window(qtbot, ui_env)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    opened = run_async(qtbot, open_files(window, [str(text)]))
    assert opened.references == [str(text)]  # offered to the tray, which checks it
    assert window.composer.tray.sources() == []
    assert window.composer.tray.notice_text()  # and says why it refused
    assert window.viewer_stack.currentWidget() is window.welcome
    window.close()
