"""The viewer: threaded decode, fit / 100 % / wheel zoom, navigation, details and actions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QObject, QPoint, QPointF, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices, QGuiApplication, QImage, QWheelEvent
from PySide6.QtWidgets import QApplication, QFileDialog
from pytestqt.qtbot import QtBot

from nbdesk.core.jobs import JobParams
from nbdesk.core.refs import RefRecord
from nbdesk.ui import viewer as viewer_module
from nbdesk.ui.library_view import MIME_IDS
from nbdesk.ui.thumbnails import ThumbnailCache
from nbdesk.ui.viewer import ImageViewer
from tests.ui.conftest import UiEnv
from tests.ui.test_library_view import add_item, image_bytes, show_in_host

W, H = 1600, 1200


@pytest.fixture
def three(ui_env: UiEnv) -> list[int]:
    lib = ui_env.rt.library
    return [
        add_item(lib, "a quiet harbour at night", size=(W, H), colour=(20, 40, 90)),
        add_item(lib, "a field of sunflowers", size=(W, H), colour=(220, 200, 30),
                 params=JobParams("4:3", "2K", "png")),
        add_item(lib, "a red door", size=(800, 1000), colour=(180, 20, 20)),
    ]


def make_viewer(qtbot: QtBot, env: UiEnv) -> ImageViewer:
    thumbs = ThumbnailCache(env.rt.paths.thumbnails, size=128)
    viewer = ImageViewer(env.controller, thumbs)
    thumbs.setParent(viewer)
    show_in_host(qtbot, viewer, 1000, 700)
    viewer.splitter.setSizes([800, 200])
    return viewer


def open_at(qtbot: QtBot, viewer: ImageViewer, ids: list[int], current: int) -> None:
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000) as loaded:
        viewer.set_items(ids, current)
        # the decode runs in a thread: the GUI thread is back before the image is
        assert viewer.is_loading() and viewer.image() is None
        assert viewer.canvas.message.isVisible() and viewer.canvas.message.text() == "Loading…"
    assert loaded.args == [current]
    assert not viewer.canvas.message.isVisible()


def test_loads_the_image_in_a_thread_and_shows_the_details(
    qtbot: QtBot, ui_env: UiEnv, three: list[int]
) -> None:
    viewer = make_viewer(qtbot, ui_env)
    with qtbot.waitSignal(viewer.currentChanged) as changed:
        open_at(qtbot, viewer, three, three[1])
    assert changed.args == [three[1]]
    image = viewer.image()
    assert image is not None and (image.width(), image.height()) == (W, H)
    assert viewer.canvas.has_image() and viewer.canvas.image_size().toTuple() == (W, H)
    item = ui_env.rt.library.item(three[1])
    assert viewer.current_item == item
    assert viewer.prompt_label.text() == "a field of sunflowers"
    assert viewer.prompt_label.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    assert viewer.model_label.text() == "nano-banana"
    assert viewer.provider_label.text() == "apiframe"
    assert viewer.size_label.text() == f"{W} × {H}"
    assert "PNG" in viewer.file_label.text() and "KB" in viewer.file_label.text()
    assert viewer.params_label.text() == "aspect 4:3 · resolution 2K · format png"
    assert viewer.cost_label.text() == "$0.040"
    assert viewer.remote_label.toolTip() == item.remote_id  # shown shortened
    assert viewer.path_label.toolTip() == str(item.path)
    assert viewer.position_label.text() == "2 of 3"
    # Rows only a Gemini answer fills are not shown empty.
    assert not viewer._form.isRowVisible(viewer.context_label)
    assert not viewer._form.isRowVisible(viewer.answer_label)


def test_thumbnail_stands_in_while_the_decode_is_still_running(
    qtbot: QtBot, ui_env: UiEnv, three: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = make_viewer(qtbot, ui_env)
    item = ui_env.rt.library.item(three[0])
    thumbs = viewer.thumbnails
    assert thumbs is not None
    with qtbot.waitSignal(thumbs.ready, timeout=10_000):
        thumbs.get(item.id, item.path, item.sha256)
    gate = threading.Event()
    real = viewer_module.decode_for_display

    def held(path: Path) -> list[QImage]:  # the worker thread waits for the test
        gate.wait(10)
        return real(path)

    monkeypatch.setattr(viewer_module, "decode_for_display", held)
    viewer.set_items(three, three[0])
    # the GUI thread keeps running while the decode is held: details, then the preview
    qtbot.waitUntil(lambda: viewer.canvas.image_size().toTuple() == (W, H), timeout=10_000)
    assert viewer.prompt_label.text() == item.prompt
    assert viewer.is_loading() and not viewer.canvas.has_image() and viewer.image() is None
    assert viewer.canvas.message.text() == "Loading…"
    assert viewer.canvas.zoom() == pytest.approx(viewer.canvas.fit_zoom())
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000):
        gate.set()
    assert viewer.canvas.has_image() and viewer.image() is not None


def test_fit_and_actual_size(qtbot: QtBot, ui_env: UiEnv, three: list[int]) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[0])
    canvas = viewer.canvas
    vp = canvas.viewport().size()
    expected = min(vp.width() / W, vp.height() / H)
    assert canvas.is_fit() and canvas.zoom() == pytest.approx(expected)
    assert expected < 1
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_1)
    assert canvas.zoom() == pytest.approx(1.0) and not canvas.is_fit() and canvas.can_pan()
    assert viewer.zoom_label.text() == "100%"
    qtbot.keyClick(canvas, Qt.Key.Key_F)
    assert canvas.zoom() == pytest.approx(expected) and not canvas.can_pan()
    qtbot.keyClick(canvas, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    assert canvas.zoom() == pytest.approx(1.0)
    qtbot.keyClick(canvas, Qt.Key.Key_Plus)
    assert canvas.zoom() == pytest.approx(1.25)
    qtbot.keyClick(canvas, Qt.Key.Key_Minus)
    qtbot.keyClick(canvas, Qt.Key.Key_Minus)
    assert canvas.zoom() == pytest.approx(0.8)
    # fit follows the window size
    qtbot.keyClick(canvas, Qt.Key.Key_F)
    viewer.splitter.setSizes([500, 500])
    qtbot.waitUntil(lambda: canvas.viewport().width() < vp.width())
    smaller = canvas.viewport().size()
    assert canvas.zoom() == pytest.approx(min(smaller.width() / W, smaller.height() / H))


def wheel(canvas: QObject, pos: QPoint, notches: int) -> None:
    event = QWheelEvent(QPointF(pos), QPointF(pos), QPoint(0, 0), QPoint(0, 120 * notches),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(canvas, event)


def test_wheel_zoom_keeps_the_point_under_the_cursor(
    qtbot: QtBot, ui_env: UiEnv, three: list[int]
) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[0])
    canvas = viewer.canvas
    canvas.actual_size()
    for pos, notches in ((QPoint(150, 120), 1), (QPoint(500, 300), 2), (QPoint(90, 400), -1)):
        before = canvas.mapToScene(pos)
        zoom = canvas.zoom()
        wheel(canvas.viewport(), pos, notches)
        assert canvas.zoom() == pytest.approx(zoom * 1.25 ** notches)
        after = canvas.mapToScene(pos)
        tolerance = 1.01 / min(zoom, canvas.zoom())  # one device pixel, in scene units
        assert abs(after.x() - before.x()) <= tolerance, (pos, before, after)
        assert abs(after.y() - before.y()) <= tolerance, (pos, before, after)


def test_drag_pans_when_zoomed_in(qtbot: QtBot, ui_env: UiEnv, three: list[int]) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[0])
    canvas = viewer.canvas
    canvas.actual_size()
    start = canvas.horizontalScrollBar().value(), canvas.verticalScrollBar().value()
    vp = canvas.viewport()
    qtbot.mousePress(vp, Qt.MouseButton.LeftButton, pos=QPoint(300, 300))
    qtbot.mouseMove(vp, QPoint(250, 270))
    qtbot.mouseRelease(vp, Qt.MouseButton.LeftButton, pos=QPoint(250, 270))
    end = canvas.horizontalScrollBar().value(), canvas.verticalScrollBar().value()
    assert (end[0] - start[0], end[1] - start[1]) == (50, 30)


def test_left_and_right_navigate(qtbot: QtBot, ui_env: UiEnv, three: list[int]) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[0])
    viewer.canvas.setFocus()
    assert not viewer.prev_action.isEnabled() and viewer.next_action.isEnabled()
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000) as loaded:
        qtbot.keyClick(viewer.canvas, Qt.Key.Key_Right)
    assert loaded.args == [three[1]] and viewer.current_id == three[1]
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000) as loaded:
        qtbot.keyClick(viewer.canvas, Qt.Key.Key_PageDown)
    assert loaded.args == [three[2]] and viewer.image().size().toTuple() == (800, 1000)
    assert viewer.prompt_label.text() == "a red door" and not viewer.next_action.isEnabled()
    with qtbot.assertNotEmitted(viewer.currentChanged):
        qtbot.keyClick(viewer.canvas, Qt.Key.Key_Right)  # already at the end
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000) as loaded:
        qtbot.keyClick(viewer.canvas, Qt.Key.Key_Left)
    assert loaded.args == [three[1]]


def test_fast_navigation_shows_only_the_last_image(
    qtbot: QtBot, ui_env: UiEnv, three: list[int]
) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[0])
    seen: list[int] = []
    viewer.imageLoaded.connect(seen.append)
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000,
                          check_params_cb=lambda i: i == three[2]):
        viewer.next()
        viewer.next()
    assert seen == [three[2]] and viewer.prompt_label.text() == "a red door"


def test_copy_prompt_and_copy_image(qtbot: QtBot, ui_env: UiEnv, three: list[int]) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[2])
    viewer.canvas.setFocus()
    clipboard = QGuiApplication.clipboard()
    qtbot.keyClick(viewer.canvas, Qt.Key.Key_C,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert clipboard.text() == "a red door"
    qtbot.keyClick(viewer.canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    mime = clipboard.mimeData()
    assert mime.hasImage() and clipboard.image().size().toTuple() == (800, 1000)
    assert [u.toLocalFile() for u in mime.urls()] == [str(ui_env.rt.library.item(three[2]).path)]


def test_rerun_edit_and_use_as_reference_emit_the_item(
    qtbot: QtBot, ui_env: UiEnv, three: list[int]
) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[1])
    c = ui_env.controller
    item = ui_env.rt.library.item(three[1])
    with qtbot.waitSignal(c.rerunRequested) as rerun:
        viewer.rerun_action.trigger()
    assert rerun.args == [item]
    viewer.canvas.setFocus()
    with qtbot.waitSignal(c.editRequested) as edit:
        qtbot.keyClick(viewer.canvas, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)
    assert edit.args == [item]
    with qtbot.waitSignal(c.useAsReference) as ref:
        viewer.reference_action.trigger()
    assert ref.args == [str(item.path)]
    mime = viewer.drag_mime()
    assert mime is not None and [u.toLocalFile() for u in mime.urls()] == [str(item.path)]
    assert mime.hasFormat(MIME_IDS)


def test_favourite_and_delete_with_undo(
    qtbot: QtBot, ui_env: UiEnv, three: list[int]
) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[1])
    lib = ui_env.rt.library
    c = ui_env.controller
    viewer.canvas.setFocus()
    with qtbot.waitSignal(c.libraryChanged, timeout=10_000):
        qtbot.keyClick(viewer.canvas, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
    assert lib.item(three[1]).favourite and viewer.favourite_action.isChecked()

    with qtbot.waitSignal(c.message, check_params_cb=lambda level, _t: level == "undo"), \
         qtbot.waitSignal(viewer.imageLoaded, timeout=10_000) as loaded:
        qtbot.keyClick(viewer.canvas, Qt.Key.Key_Delete)
    assert loaded.args == [three[2]]  # moved on to the next image
    assert viewer.ids() == [three[0], three[2]]
    assert lib.item(three[1]).deleted_at is not None
    with qtbot.waitSignal(c.libraryChanged, timeout=10_000):
        c.undo_trash()
    assert lib.item(three[1]).deleted_at is None and lib.item(three[1]).path.is_file()


def test_unreadable_file_shows_a_message(qtbot: QtBot, ui_env: UiEnv) -> None:
    broken = add_item(ui_env.rt.library, "broken", data=b"not an image" * 100)
    viewer = make_viewer(qtbot, ui_env)
    viewer.set_items([broken], broken)
    qtbot.waitUntil(lambda: not viewer.is_loading(), timeout=10_000)
    assert viewer.image() is None and not viewer.canvas.has_image()
    assert viewer.canvas.message.text().startswith("Cannot read")
    assert viewer.prompt_label.text() == "broken"  # the details still show


def test_references_and_parent_are_listed(qtbot: QtBot, ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    parent = add_item(lib, "the original")
    rel, sha = lib.import_ref(image_bytes(300, 200, (0, 128, 0)), "png")
    refs = [RefRecord("/home/me/leaf.png", "file", rel, sha, 300, 200, "image/png"),
            RefRecord("https://example.com/a.jpg", "url")]
    child = add_item(lib, "the edit", refs=refs, parent_item=parent)
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, [child], child)
    texts = [w.text() for w in viewer.refs_box.findChildren(type(viewer.prompt_label))
             if w.text()]
    assert texts == ["/home/me/leaf.png", "https://example.com/a.jpg"]
    thumbs = [w for w in viewer.refs_box.findChildren(type(viewer.prompt_label))
              if w.width() == 48]
    qtbot.waitUntil(lambda: thumbs[0].pixmap() is not None and not thumbs[0].pixmap().isNull(),
                    timeout=10_000)
    assert thumbs[0].pixmap().width() == 48
    assert f"#{parent}" in viewer.parent_label.text()
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000) as loaded:
        viewer.parent_label.linkActivated.emit(f"item:{parent}")
    assert loaded.args == [parent]


# The offscreen platform cannot size a real dialog window; nothing else may warn.
@pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")
def test_save_as_copies_the_original_bytes(
    qtbot: QtBot, ui_env: UiEnv, three: list[int], tmp_path: Path
) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[0])
    dialog = viewer.save_as()
    assert isinstance(dialog, QFileDialog) and dialog.isVisible()
    assert dialog.acceptMode() == QFileDialog.AcceptMode.AcceptSave
    with qtbot.waitSignal(viewer.saved, timeout=10_000) as saved:
        dialog.fileSelected.emit(str(tmp_path / "copy"))  # what accepting emits
        dialog.reject()
    dest = Path(saved.args[0])
    assert dest == tmp_path / "copy.png"
    assert dest.read_bytes() == ui_env.rt.library.item(three[0]).path.read_bytes()


class _Opened(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[QUrl] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.urls.append(url)


def test_reveal_opens_the_folder(qtbot: QtBot, ui_env: UiEnv, three: list[int]) -> None:
    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, three, three[0])
    handler = _Opened()
    QDesktopServices.setUrlHandler("file", handler, "open")  # type: ignore[call-overload]
    try:
        viewer.reveal_action.trigger()
    finally:
        QDesktopServices.unsetUrlHandler("file")
    assert [u.toLocalFile() for u in handler.urls] == [
        str(ui_env.rt.library.item(three[0]).path.parent)]


def test_a_gemini_edit_chain_is_shown_and_edit_continues_it(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    """Three Gemini images, each an Edit of the one before: the middle one's details link
    to its ancestor and to its edit, and say which thought signatures it keeps."""
    from nbdesk.core.jobs import JobSpec
    from tests.ui.conftest import run_async

    ctl = ui_env.controller
    ids: list[int] = []
    for prompt in ("a paper boat", "make it red", "add a sail"):
        parent = ids[-1] if ids else None
        refs = (str(ui_env.rt.library.item(parent).path),) if parent is not None else ()
        spec = JobSpec("gemini", "gemini-3-pro-image-preview", prompt,
                       JobParams(resolution="1K", with_text=True), refs=refs,
                       parent_item=parent)
        with qtbot.waitSignal(ctl.itemsAdded, timeout=15_000) as added:
            run_async(qtbot, ctl.submit(spec))
        ids.append(added.args[0][0])
    first, middle, last = ids
    assert ui_env.sim.stats.jobs[-1].turns == 5  # the whole chain went back

    viewer = make_viewer(qtbot, ui_env)
    open_at(qtbot, viewer, ids, middle)
    qtbot.waitUntil(lambda: "edited into" in viewer.parent_label.text(), timeout=10_000)
    chain = viewer.parent_label.text()
    assert f'href="item:{first}"' in chain and f"<b>#{middle}</b>" in chain
    assert f'edited into <a href="item:{last}">#{last}</a>' in chain
    assert viewer.context_label.text().startswith("2 thought signatures kept")
    assert viewer.answer_label.text().startswith("Here is the image")
    assert viewer._form.isRowVisible(viewer.context_label)
    assert viewer._form.isRowVisible(viewer.answer_label)

    with qtbot.waitSignal(ctl.editRequested) as edit:
        viewer.edit_action.trigger()
    assert edit.args[0].id == middle
    with qtbot.waitSignal(viewer.imageLoaded, timeout=10_000) as loaded:
        viewer.parent_label.linkActivated.emit(f"item:{first}")
    assert loaded.args == [first]
    qtbot.waitUntil(lambda: "edited into" in viewer.parent_label.text(), timeout=10_000)
    assert viewer.parent_label.text() == f'edited into <a href="item:{middle}">#{middle}</a>'
