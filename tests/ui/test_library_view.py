"""The library grid: lazy model over ids, search and filters, actions through the controller."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtWidgets import QFileDialog, QWidget
from pytestqt.qtbot import QtBot

from nbdesk.core.jobs import JobParams, JobSpec
from nbdesk.core.library import Item, Library, make_owner
from nbdesk.core.refs import RefRecord
from nbdesk.ui.library_view import (
    ADD_INTERVAL,
    EMPTY_TEXT,
    MIME_IDS,
    NO_MATCH_TEXT,
    ItemIdRole,
    LibraryView,
)
from nbdesk.ui.thumbnails import ThumbnailCache
from tests.ui.conftest import UiEnv, run_async


def image_bytes(width: int, height: int, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return buf.getvalue()


def add_item(
    lib: Library, prompt: str, *, provider: str = "apiframe", model: str = "nano-banana",
    size: tuple[int, int] = (320, 240), colour: tuple[int, int, int] = (200, 60, 60),
    params: JobParams | None = None, data: bytes | None = None,
    refs: Sequence[RefRecord] = (), parent_item: int | None = None,
) -> int:
    """A completed job with one real PNG, through the calls the engine makes."""
    data = image_bytes(*size, colour) if data is None else data
    owner = make_owner()
    spec = JobSpec(provider, model, prompt, params or JobParams("4:3"),
                   parent_item=parent_item)
    (job,) = lib.add_jobs(spec, refs, 1, owner)
    job = lib.update_job(job.id, owner, remote_id="remote-" + job.id[:6])
    tmp = lib.tmp_path(job.id, 0)
    tmp.write_bytes(data)
    stored = lib.place_image(job, 0, tmp, sha256=hashlib.sha256(data).hexdigest(),
                             size=len(data), width=size[0], height=size[1], fmt="png",
                             ext="png")
    lib.complete_job(job, owner, [stored], 0.04)
    return lib.items_for_job(job.id)[0].id


def bulk_items(lib: Library, count: int) -> None:
    """Many rows at once (no files: their thumbnails are placeholders)."""
    now = time.time()
    rows = [
        (f"images/bulk/{n:06d}.png", f"{n:064x}", 100, 64, 64, "png", f"bulk prompt {n}",
         "apiframe", "nano-banana", now - n, now - n)
        for n in range(count)
    ]
    with lib._write() as conn:
        conn.executemany(
            "INSERT INTO items (path, sha256, size, width, height, format, prompt, provider,"
            " model, created_at, completed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)


def show_in_host(qtbot: QtBot, widget: QWidget, width: int = 800, height: int = 600) -> QWidget:
    """Show ``widget`` inside a plain window (a top-level with a layout makes the offscreen
    plugin warn that it cannot propagate size hints)."""
    host = QWidget()
    qtbot.addWidget(host)
    host.resize(width, height)
    widget.setParent(host)
    widget.setGeometry(0, 0, width, height)
    host.show()
    qtbot.waitExposed(host)
    widget.host = host  # type: ignore[attr-defined]  # qtbot holds widgets weakly
    return host


def make_view(qtbot: QtBot, env: UiEnv, **kwargs: Any) -> LibraryView:
    thumbs = ThumbnailCache(env.rt.paths.thumbnails, size=128)
    view = LibraryView(env.controller, thumbs, icon_size=96, **kwargs)
    thumbs.setParent(view)
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        show_in_host(qtbot, view)
    return view


def rows(view: LibraryView) -> list[int]:
    return view.model.ids()


def select(view: LibraryView, ids: Sequence[int]) -> None:
    view.select_ids(ids)
    assert view.selected_ids() == sorted(ids, key=rows(view).index)


def wait_items(qtbot: QtBot, view: LibraryView) -> list[Item]:
    """Every row's item fetched (the page for the visible rows)."""
    qtbot.waitUntil(lambda: all(view.model.item_at(r) is not None
                                for r in range(view.model.rowCount())), timeout=10_000)
    return [view.model.item_at(r) for r in range(view.model.rowCount())]  # type: ignore[misc]


def refilter(qtbot: QtBot, view: LibraryView, action: Any) -> None:
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        action()


def test_empty_library_shows_the_friendly_placeholder(qtbot: QtBot, ui_env: UiEnv) -> None:
    view = make_view(qtbot, ui_env)
    assert view.is_empty_state() and view.empty_label.text() == EMPTY_TEXT
    assert view.empty_label.isVisible() and not view.list.isVisible()
    assert view.count_label.text() == "0 images"


def test_a_selected_cell_is_drawn_in_the_highlight_colour(qtbot: QtBot, ui_env: UiEnv) -> None:
    """The grid draws the selection itself (not through the style's item panel): the
    selected cell's margin is the palette's highlight, an unselected one's is not."""
    from PySide6.QtGui import QPalette

    first = add_item(ui_env.rt.library, "selected one")
    second = add_item(ui_env.rt.library, "not selected")
    view = make_view(qtbot, ui_env)
    wait_items(qtbot, view)
    select(view, [first])
    view.list.viewport().repaint()
    image = view.list.viewport().grab().toImage()

    def margin_colour(item_id: int) -> tuple[int, int, int]:
        rect = view.list.visualRect(view.model.index_of(item_id))
        pixel = image.pixelColor(rect.left() + 2, rect.top() + 2)  # in the 8 px padding
        return pixel.red(), pixel.green(), pixel.blue()

    palette = view.list.palette()
    group = (QPalette.ColorGroup.Active if view.list.isActiveWindow()
             else QPalette.ColorGroup.Inactive)
    highlight = palette.color(group, QPalette.ColorRole.Highlight)
    assert margin_colour(first) == (highlight.red(), highlight.green(), highlight.blue())
    assert margin_colour(second) != margin_colour(first)


def test_grid_shows_items_and_full_text_search_filters(qtbot: QtBot, ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    bike = add_item(lib, "A red bicycle leaning on a wall")
    mountain = add_item(lib, "a snowy mountain at dawn", colour=(240, 240, 255))
    fox = add_item(lib, "red fox in the snow", size=(200, 400))
    view = make_view(qtbot, ui_env)
    assert rows(view) == [fox, mountain, bike]  # newest first
    assert not view.is_empty_state() and view.count_label.text() == "3 images"
    items = wait_items(qtbot, view)
    model = view.model
    assert model.data(model.index(0, 0)) == "red fox in the snow"
    tip = model.data(model.index(0, 0), Qt.ItemDataRole.ToolTipRole)
    assert "red fox in the snow" in tip and "nano-banana" in tip and "200 × 400" in tip
    assert model.data(model.index(2, 0), ItemIdRole) == bike
    assert items[2].path.is_file()

    # thumbnails arrive in threads; the decoration then is the real picture, not the placeholder
    qtbot.waitUntil(lambda: view.thumbnails.peek(fox) is not None, timeout=10_000)
    thumb = view.thumbnails.peek(fox)
    assert thumb is not None and (thumb.width(), thumb.height()) == (64, 128)
    pixmap = model.data(model.index(0, 0), Qt.ItemDataRole.DecorationRole)
    assert pixmap.height() == 96 and pixmap.width() == 48

    refilter(qtbot, view, lambda: qtbot.keyClicks(view.search, "red"))  # debounced
    assert rows(view) == [fox, bike] and view.count_label.text() == "2 images"
    view.search.clear()
    refilter(qtbot, view, lambda: qtbot.keyClicks(view.search, "snow"))  # prefix match
    assert rows(view) == [fox, mountain]
    view.search.clear()
    refilter(qtbot, view, lambda: qtbot.keyClicks(view.search, "zebra"))
    assert rows(view) == [] and view.is_empty_state()
    assert view.empty_label.text() == NO_MATCH_TEXT
    refilter(qtbot, view, view.search.clear)
    assert rows(view) == [fox, mountain, bike]


def test_provider_model_and_date_filters(qtbot: QtBot, ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    frame = add_item(lib, "from apiframe")
    free = add_item(lib, "from apifree", provider="apifree", model="google/nano-banana-pro")
    old = add_item(lib, "an old picture", model="nano-banana-pro")
    with lib._write() as conn:
        conn.execute("UPDATE items SET completed_at = ? WHERE id = ?",
                     (time.time() - 40 * 86400, old))
    view = make_view(qtbot, ui_env)
    assert rows(view) == [free, frame, old]

    refilter(qtbot, view, lambda: view.provider_combo.setCurrentIndex(
        view.provider_combo.findData("apifree")))
    assert rows(view) == [free]
    refilter(qtbot, view, lambda: view.provider_combo.setCurrentIndex(
        view.provider_combo.findData("apiframe")))
    assert rows(view) == [frame, old]
    refilter(qtbot, view, lambda: view.model_combo.setCurrentIndex(
        view.model_combo.findData("nano-banana-pro")))
    assert rows(view) == [old]
    refilter(qtbot, view, lambda: view.model_combo.setCurrentIndex(0))
    refilter(qtbot, view, lambda: view.date_combo.setCurrentIndex(
        view.date_combo.findText("Last 30 days")))
    assert rows(view) == [frame]
    refilter(qtbot, view, lambda: view.date_combo.setCurrentIndex(
        view.date_combo.findText("Today")))
    assert rows(view) == [frame]
    assert view.filters()["provider"] == "apiframe" and view.filters()["since"] is not None


def test_favourites_filter_and_toggle(qtbot: QtBot, ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    a = add_item(lib, "first")
    b = add_item(lib, "second")
    view = make_view(qtbot, ui_env)
    wait_items(qtbot, view)
    select(view, [a])
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        view.list.setFocus()
        qtbot.keyClick(view.list, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
    assert lib.item(a).favourite and not lib.item(b).favourite
    refilter(qtbot, view, lambda: view.favourites_check.setChecked(True))
    assert rows(view) == [a]
    # toggling again (all selected are favourites) removes the mark
    select(view, [a])
    qtbot.waitUntil(lambda: view.model.item(a) is not None and view.model.item(a).favourite,
                    timeout=10_000)
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        view.toggle_favourite()
    assert not lib.item(a).favourite and rows(view) == []


def test_delete_key_trashes_the_selection_and_undo_restores_it(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    lib = ui_env.rt.library
    ids = [add_item(lib, f"picture {n}") for n in range(4)]
    view = make_view(qtbot, ui_env)
    before = rows(view)
    assert before == ids[::-1]
    select(view, [ids[1], ids[2]])
    removed: list[tuple[int, int]] = []
    view.model.rowsRemoved.connect(lambda _p, first, last: removed.append((first, last)))
    resets: list[bool] = []
    view.model.modelReset.connect(lambda: resets.append(True))
    c = ui_env.controller
    with qtbot.waitSignal(c.message, check_params_cb=lambda level, _t: level == "undo"):
        view.list.setFocus()
        qtbot.keyClick(view.list, Qt.Key.Key_Delete)
    qtbot.waitUntil(lambda: rows(view) == [ids[3], ids[0]], timeout=10_000)
    assert removed == [(1, 2)] and not resets  # rows removed in place, not a reset
    assert not lib.item(ids[1]).path.exists()

    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        c.undo_trash()
    assert rows(view) == before and lib.item(ids[1]).path.is_file()
    assert not resets


def test_delete_in_the_search_field_deletes_text_not_images(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    item = add_item(ui_env.rt.library, "keep me")
    view = make_view(qtbot, ui_env)
    select(view, [item])
    view.search.setText("ab")
    view.search.setFocus()
    view.search.setCursorPosition(0)
    qtbot.keyClick(view.search, Qt.Key.Key_Delete)
    assert view.search.text() == "b"
    assert not ui_env.controller.can_undo


def test_mime_data_carries_file_urls_and_ids(qtbot: QtBot, ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    a = add_item(lib, "one")
    b = add_item(lib, "two")
    view = make_view(qtbot, ui_env)
    wait_items(qtbot, view)
    model = view.model
    assert model.flags(model.index(0, 0)) & Qt.ItemFlag.ItemIsDragEnabled
    assert model.supportedDragActions() == Qt.DropAction.CopyAction
    mime = model.mimeData([model.index(1, 0), model.index(0, 0)])
    assert [u.toLocalFile() for u in mime.urls()] == [str(lib.item(b).path),
                                                      str(lib.item(a).path)]
    assert json.loads(bytes(mime.data(MIME_IDS).data())) == [b, a]
    assert set(model.mimeTypes()) == {"text/uri-list", MIME_IDS}
    assert view.list.dragEnabled()


def test_enter_opens_and_use_as_reference_emits_the_path(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    item = add_item(ui_env.rt.library, "open me")
    view = make_view(qtbot, ui_env)
    wait_items(qtbot, view)
    view.list.setFocus()
    view.list.selectionModel().setCurrentIndex(
        view.model.index(0, 0), QItemSelectionModel.SelectionFlag.ClearAndSelect)
    with qtbot.waitSignal(view.itemActivated) as opened:
        qtbot.keyClick(view.list, Qt.Key.Key_Return)
    assert opened.args == [item]
    with qtbot.waitSignal(ui_env.controller.useAsReference) as ref:
        view.reference_action.trigger()
    assert ref.args == [str(ui_env.rt.library.item(item).path)]


def test_new_items_are_inserted_keeping_the_selection(qtbot: QtBot, ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    first = add_item(lib, "first")
    view = make_view(qtbot, ui_env)
    select(view, [first])
    resets: list[bool] = []
    view.model.modelReset.connect(lambda: resets.append(True))
    c = ui_env.controller
    with qtbot.waitSignal(view.model.rowsInserted, timeout=20_000):
        run_async(qtbot, c.submit(JobSpec("apiframe", "nano-banana", "a lighthouse", demo=True)))
    qtbot.waitUntil(lambda: len(rows(view)) == 2, timeout=10_000)
    assert rows(view)[1] == first and view.selected_ids() == [first] and not resets
    assert view.count_label.text() == "2 images"


# The offscreen platform cannot size a real dialog window; nothing else may warn.
@pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")
def test_export_copies_the_originals_in_a_thread(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    lib = ui_env.rt.library
    a = add_item(lib, "export a")
    b = add_item(lib, "export b", colour=(10, 200, 10))
    view = make_view(qtbot, ui_env)
    select(view, [a, b])
    out = tmp_path / "out"
    out.mkdir()
    dialog = view.export_selected()
    assert isinstance(dialog, QFileDialog) and dialog.isVisible()
    assert dialog.fileMode() == QFileDialog.FileMode.Directory
    with qtbot.waitSignal(view.exportFinished, timeout=10_000) as done, \
         qtbot.waitSignal(ui_env.controller.message) as msg:
        dialog.fileSelected.emit(str(out))  # what accepting the dialog emits
        dialog.reject()
    written = [Path(p) for p in done.args[0]]
    assert [p.read_bytes() for p in written] == [lib.item(b).path.read_bytes(),
                                                 lib.item(a).path.read_bytes()]
    assert msg.args[0] == "info" and "Exported 2 image(s)" in msg.args[1]
    assert not view.progress.isVisible()
    # exporting again never overwrites
    with qtbot.waitSignal(view.exportFinished, timeout=10_000) as again:
        view.export_to([a], out)
    (path,) = again.args[0]
    assert Path(path).name.endswith("-1.png") and len(list(out.iterdir())) == 3


def test_ten_thousand_items_load_ids_only_and_items_in_pages(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    bulk_items(ui_env.rt.library, 10_000)
    c = ui_env.controller
    fetched: list[int] = []
    real = c.items_by_id

    async def counting(ids: Sequence[int]) -> dict[int, Item]:
        fetched.extend(ids)
        return await real(ids)

    c.items_by_id = counting  # type: ignore[method-assign]
    started = time.perf_counter()
    view = make_view(qtbot, ui_env, page_size=100)
    assert view.model.rowCount() == 10_000 and view.count_label.text() == "10,000 images"
    qtbot.waitUntil(lambda: view.model.item_at(0) is not None, timeout=10_000)
    # only the page(s) of the rows on screen were fetched
    assert 0 < len(fetched) <= 200, len(fetched)
    assert view.model.item_at(5_000) is None

    last = view.model.index(9_999, 0)
    qtbot.waitUntil(lambda: view.list.visualRect(last).isValid(), timeout=10_000)  # batched
    view.list.scrollToBottom()
    qtbot.waitUntil(lambda: view.model.item_at(9_999) is not None, timeout=10_000)
    assert len(fetched) <= 400 and len(set(fetched)) == len(fetched)
    assert view.model.fetched == len(fetched)
    assert time.perf_counter() - started < 10


def test_new_items_go_on_top_without_a_reload(qtbot: QtBot, ui_env: UiEnv) -> None:
    """A job finished here: its items are inserted at row 0 (no reset, no re-read of
    every id); one that would not sort first, or a filtered grid, re-reads the ids."""
    lib = ui_env.rt.library
    old = [add_item(lib, f"picture {n}") for n in range(3)]
    view = make_view(qtbot, ui_env)
    wait_items(qtbot, view)
    inserted: list[tuple[int, int]] = []
    view.model.rowsInserted.connect(lambda _p, first, last: inserted.append((first, last)))
    resets: list[bool] = []
    view.model.modelReset.connect(lambda: resets.append(True))
    c = ui_env.controller

    new = add_item(lib, "a new picture")
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        c.itemsAdded.emit([new])
    assert rows(view) == [new, *old[::-1]] and inserted == [(0, 0)] and not resets
    assert view.model.item_at(0) is not None  # came with the insertion, no page fetch
    assert view.count_label.text() == "4 images"

    # an "added" item that is older than the top row: placed by a re-read instead
    late = add_item(lib, "stored late with an early date")
    with lib._write() as conn:
        conn.execute("UPDATE items SET completed_at = ? WHERE id = ?", (1.0, late))
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        c.itemsAdded.emit([late])
    assert rows(view) == [new, *old[::-1], late] and not resets

    # under a filter the new item may not match: the ids are read again
    refilter(qtbot, view, lambda: qtbot.keyClicks(view.search, "picture"))
    other = add_item(lib, "a lighthouse")
    match = add_item(lib, "one more picture")
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        c.itemsAdded.emit([other, match])
    assert rows(view) == [match, new, *old[::-1]]


@pytest.mark.parametrize("count", [0, 3])
def test_first_screen_ready_once_items_and_thumbnails_are_in(
    qtbot: QtBot, ui_env: UiEnv, count: int
) -> None:
    """At start the grid fetches its first page and that page's thumbnails without
    waiting to be painted; firstScreenReady tells when the rows in view have both (the
    window holds its key check and the HTTP client back until then)."""
    ids = [add_item(ui_env.rt.library, f"picture {n}") for n in range(count)]
    thumbs = ThumbnailCache(ui_env.rt.paths.thumbnails, size=128)
    view = LibraryView(ui_env.controller, thumbs, icon_size=96)
    thumbs.setParent(view)
    seen: list[bool] = []
    view.firstScreenReady.connect(lambda: seen.append(True))
    with qtbot.waitSignal(view.firstScreenReady, timeout=10_000):
        show_in_host(qtbot, view)
    assert view.first_screen_shown and rows(view) == ids[::-1]
    assert all(thumbs.peek(i) is not None for i in ids)
    view.model.reload()  # later reloads do not announce it again
    qtbot.waitUntil(lambda: not view.model.is_loading(), timeout=10_000)
    assert seen == [True]


def test_new_items_in_quick_succession_are_inserted_together(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    """The first announcement after a quiet spell is inserted at once; those that come
    within ADD_INTERVAL of it wait and go in with one insertion (each insertion re-lays
    out and repaints the whole grid)."""
    lib = ui_env.rt.library
    old = add_item(lib, "old picture")
    view = make_view(qtbot, ui_env)
    wait_items(qtbot, view)
    inserted: list[tuple[int, int]] = []
    view.model.rowsInserted.connect(lambda _p, first, last: inserted.append((first, last)))
    c = ui_env.controller
    a, b, d = (add_item(lib, f"new picture {n}") for n in range(3))
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        c.itemsAdded.emit([a])
    assert inserted == [(0, 0)]
    started = time.monotonic()
    with qtbot.waitSignal(view.model.reloaded, timeout=10_000):
        c.itemsAdded.emit([b])
        run_async(qtbot, asyncio.sleep(0.01))  # another turn of the loop: still waiting
        assert inserted == [(0, 0)]
        c.itemsAdded.emit([d])
    assert time.monotonic() - started >= ADD_INTERVAL / 2
    assert inserted == [(0, 0), (0, 1)]
    assert rows(view) == [d, b, a, old]
