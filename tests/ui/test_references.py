"""The reference tray: checked off the GUI thread, refusals are messages, order is the user's."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from nbdesk.ui.references import THUMB, ReferenceTray
from tests.ui.conftest import UiEnv, run_async


def png(path: Path, size: tuple[int, int] = (64, 48), colour: str = "red") -> Path:
    Image.new("RGB", size, colour).save(path, "PNG")
    return path


@pytest.fixture
def tray(qtbot: QtBot, ui_env: UiEnv) -> ReferenceTray:
    widget = ReferenceTray(ui_env.controller)
    qtbot.addWidget(widget)
    return widget


@pytest.fixture
def messages(ui_env: UiEnv) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    ui_env.controller.message.connect(lambda level, text: seen.append((level, text)))
    return seen


def drop(qtbot: QtBot, target: object, mime: QMimeData) -> QDropEvent:
    enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, enter)  # type: ignore[arg-type]
    assert enter.isAccepted()
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, event)  # type: ignore[arg-type]
    return event


def test_a_real_png_is_added_with_a_thumbnail(
    qtbot: QtBot, tray: ReferenceTray, tmp_path: Path
) -> None:
    image = png(tmp_path / "cat.png", (300, 150))
    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.add(str(image))
    assert tray.sources() == [str(image)]
    assert tray.count_label.text() == "1 / 14"
    icon = tray.strip.item(0).icon()
    size = icon.availableSizes()[0]
    assert not icon.isNull() and size.width() == THUMB and size.height() == THUMB // 2
    assert tray.strip.item(0).toolTip() == str(image)


def test_an_https_url_is_taken_as_is(qtbot: QtBot, tray: ReferenceTray) -> None:
    url = "https://images.example.org/cat.png"
    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.add(url)
    assert tray.sources() == [url]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("text", "not an image"),
        ("empty", "the file is empty"),
        ("file-url", "only http(s) URLs or local image files"),
        ("javascript", "only http(s) URLs or local image files"),
        ("folder", "is a folder"),
        ("missing", "no such file"),
    ],
)
def test_unusable_sources_are_refused_with_a_message_and_change_nothing(
    qtbot: QtBot, tray: ReferenceTray, messages: list[tuple[str, str]], tmp_path: Path,
    kind: str, reason: str,
) -> None:
    good = png(tmp_path / "good.png")
    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.add(str(good))
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    source = {
        "text": str(text_file),
        "empty": str(empty),
        "file-url": QUrl.fromLocalFile(str(good)).toString(),
        "javascript": "javascript:alert(1)",
        "folder": str(tmp_path),
        "missing": str(tmp_path / "gone.png"),
    }[kind]

    changes: list[None] = []
    tray.changed.connect(lambda: changes.append(None))
    with qtbot.waitSignal(tray.refused, timeout=5000) as refused:
        tray.add(source)
    message = refused.args[0]
    assert reason in message
    assert tray.sources() == [str(good)] and changes == []
    assert tray.notice_text() == message and tray.notice.isVisibleTo(tray)
    assert messages[-1] == ("error", message)


def test_the_limit_refuses_the_whole_drop_and_names_the_count(
    qtbot: QtBot, tray: ReferenceTray, messages: list[tuple[str, str]], tmp_path: Path
) -> None:
    a, b, c, d = (png(tmp_path / f"{n}.png", colour=col)
                  for n, col in zip("abcd", ("red", "green", "blue", "white"), strict=True))
    tray.set_max(3)
    assert tray.count_label.text() == "0 / 3"
    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.add_sources([str(a), str(b)])
    assert tray.sources() == [str(a), str(b)]

    with qtbot.waitSignal(tray.refused, timeout=5000) as refused:
        tray.add_sources([str(c), str(d)])  # two more do not fit in 3
    assert "2/3" in refused.args[0]
    assert tray.sources() == [str(a), str(b)]
    assert messages[-1] == ("warning", refused.args[0])

    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.add(str(c))
    with qtbot.waitSignal(tray.refused, timeout=5000) as refused:
        tray.add(str(d))
    assert "3/3" in refused.args[0] and tray.sources() == [str(a), str(b), str(c)]

    # A model with a lower limit: nothing is dropped behind the user's back, the count
    # turns red (the composer refuses to queue).
    tray.set_max(1)
    assert tray.count_label.text() == "3 / 1" and "#c0392b" in tray.count_label.styleSheet()
    assert tray.sources() == [str(a), str(b), str(c)]


def test_duplicates_are_ignored(qtbot: QtBot, tray: ReferenceTray, tmp_path: Path) -> None:
    a = png(tmp_path / "a.png")
    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.add(str(a))
    same = str(tmp_path / "sub" / ".." / "a.png")
    assert run_async(qtbot, tray.add(same)) is False  # type: ignore[arg-type]
    assert tray.sources() == [str(a)]
    assert "Already in the tray" in tray.notice_text()


def test_paste_of_a_clipboard_image_adds_a_png_file(
    qtbot: QtBot, ui_env: UiEnv, tray: ReferenceTray
) -> None:
    image = QImage(40, 20, QImage.Format.Format_RGB32)
    image.fill(QColor("orange"))
    QApplication.clipboard().setImage(image)
    with qtbot.waitSignal(tray.changed, timeout=5000):
        qtbot.keyClick(tray.strip, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    (source,) = tray.sources()
    path = Path(source)
    assert path.parent == ui_env.rt.paths.tmp and path.name.startswith("paste-")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (40, 20)


def test_paste_of_url_text_adds_it_and_other_text_is_refused(
    qtbot: QtBot, tray: ReferenceTray
) -> None:
    url = "https://example.org/picture.webp"
    QApplication.clipboard().setText(url)
    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.paste()
    assert tray.sources() == [url]
    QApplication.clipboard().setText("a cat on a mat")
    with qtbot.waitSignal(tray.refused, timeout=5000) as refused:
        tray.paste()
    assert "not an image URL" in refused.args[0] and tray.sources() == [url]


def test_reorder_and_remove(qtbot: QtBot, tray: ReferenceTray, tmp_path: Path) -> None:
    a, b, c = (png(tmp_path / f"{n}.png", colour=col)
               for n, col in zip("abc", ("red", "green", "blue"), strict=True))
    with qtbot.waitSignal(tray.changed, timeout=5000):
        tray.add_sources([str(a), str(b), str(c)])
    assert tray.sources() == [str(a), str(b), str(c)]

    tray.strip.setCurrentRow(0)
    with qtbot.waitSignal(tray.changed):
        qtbot.keyClick(tray.strip, Qt.Key.Key_Right, Qt.KeyboardModifier.ControlModifier)
    assert tray.sources() == [str(b), str(a), str(c)]
    assert tray.strip.currentRow() == 1
    with qtbot.waitSignal(tray.changed):
        tray.left_button.click()
    assert tray.sources() == [str(a), str(b), str(c)]
    tray.move_item(0, 2)
    assert tray.sources() == [str(b), str(c), str(a)]

    tray.strip.setCurrentRow(1)
    with qtbot.waitSignal(tray.changed):
        qtbot.keyClick(tray.strip, Qt.Key.Key_Delete)
    assert tray.sources() == [str(b), str(a)] and tray.count_label.text() == "2 / 14"
    tray.strip.setCurrentRow(0)
    with qtbot.waitSignal(tray.changed):
        tray.remove_button.click()
    assert tray.sources() == [str(a)]
    with qtbot.waitSignal(tray.changed):
        tray.clear()
    assert tray.sources() == [] and tray.count_label.text() == "0 / 14"


def test_a_drop_of_file_urls_adds_them_in_order(
    qtbot: QtBot, tray: ReferenceTray, tmp_path: Path
) -> None:
    a, b = png(tmp_path / "a.png"), png(tmp_path / "b.png", colour="blue")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(a)), QUrl.fromLocalFile(str(b))])
    with qtbot.waitSignal(tray.changed, timeout=5000):
        event = drop(qtbot, tray.strip.viewport(), mime)
    assert event.isAccepted()
    assert tray.sources() == [str(a), str(b)]


def test_a_browser_drop_of_image_data_or_a_url(
    qtbot: QtBot, ui_env: UiEnv, tray: ReferenceTray
) -> None:
    # Pixels only (no URL): saved as a PNG file.
    image = QImage(16, 16, QImage.Format.Format_ARGB32)
    image.fill(QColor("teal"))
    mime = QMimeData()
    mime.setImageData(image)
    with qtbot.waitSignal(tray.changed, timeout=5000):
        drop(qtbot, tray, mime)
    (pasted,) = tray.sources()
    assert Path(pasted).parent == ui_env.rt.paths.tmp and Path(pasted).is_file()

    # A URL and the pixels: the URL is enough.
    mime = QMimeData()
    mime.setUrls([QUrl("https://example.org/a.jpg")])
    mime.setImageData(image)
    with qtbot.waitSignal(tray.changed, timeout=5000):
        drop(qtbot, tray.strip.viewport(), mime)
    assert tray.sources() == [pasted, "https://example.org/a.jpg"]


def test_a_drop_of_a_non_image_file_is_refused(
    qtbot: QtBot, tray: ReferenceTray, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(notes))])
    with qtbot.waitSignal(tray.refused, timeout=5000) as refused:
        drop(qtbot, tray.strip.viewport(), mime)
    assert "notes.txt" in refused.args[0] and tray.sources() == []
