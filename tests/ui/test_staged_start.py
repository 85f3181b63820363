"""The window as the app starts it, in steps: its frame, then the library grid showing a
first page read before any controller exists, then the other panels and the controller.
What a person does in between (a search typed, a key pressed on the grid) is not lost
and breaks nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QMessageBox, QSplitter
from pytestqt.qtbot import QtBot

from nbdesk.core.paths import Paths
from nbdesk.ui.composer import Composer
from nbdesk.ui.main_window import MainWindow
from nbdesk.ui.queue_view import QueueView
from tests.ui.conftest import UiEnv
from tests.ui.test_library_view import add_item, bulk_items


@pytest.fixture(autouse=True)
def _app_log_handler_removed() -> Iterator[None]:
    """Tests here run ``app.main()``, which adds nbdesk's log handler to the process-wide
    root logger; it goes again after each (other tests add their own)."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
        handler.close()


def frame(qtbot: QtBot, env: UiEnv) -> MainWindow:
    window = MainWindow(layout_file=env.rt.paths.settings_file.parent / "window.ini")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


def test_first_page_is_every_id_newest_first_and_the_first_items(ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    bulk_items(lib, 300)
    page = lib.first_page(page_size=120)
    assert page.ids == lib.item_ids()
    assert len(page.ids) == 300
    assert set(page.items) == set(page.ids[:120])
    assert page.items[page.ids[0]].prompt == "bulk prompt 0"  # the newest


def test_the_grid_shows_its_first_page_before_the_controller_arrives(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    lib = ui_env.rt.library
    bulk_items(lib, 500)
    newest = add_item(lib, "a real image on top")
    window = frame(qtbot, ui_env)
    assert window.statusBar().currentMessage() == "Opening the library…"
    assert not window.attached and not hasattr(window, "library")
    menus = [a for a in window.menuBar().actions() if a.menu() is not None]
    assert len(menus) == 4 and not any(a.isEnabled() for a in menus)  # empty until attach

    window.add_library(ui_env.rt.paths.thumbnails, preload=lambda: lib.first_page())
    grid = window.library
    # rows and the first page are there at once, with no query of its own
    assert grid.model.rowCount() == 501 and grid.model.ids()[0] == newest
    item = grid.model.item_at(0)
    assert item is not None and item.prompt == "a real image on top"
    assert grid.count_label.text() == "501 images"
    qtbot.waitUntil(lambda: grid.first_screen_shown, timeout=10_000)
    assert window.thumbnails.peek(newest) is not None

    # meanwhile: a search is typed, and Delete is pressed on a selected image
    grid.select_ids([newest])
    grid.list.setFocus()
    QTest.keyClick(grid.list, Qt.Key.Key_Delete)  # no actions yet: nothing happens
    assert grid.list.actions() == []
    grid.search.setText("real image")
    grid.apply_filters()  # (what the debounce timer would do)
    assert grid.model.rowCount() == 501  # the filter waits for the controller

    window.attach(ui_env.controller)
    assert window.attached and window.statusBar().currentMessage() == ""
    assert all(a.isEnabled() for a in menus)
    assert isinstance(window.left.widget(0), Composer)
    assert isinstance(window.left.widget(1), QueueView)
    assert window.viewer_stack.currentWidget() is window.welcome
    # the search typed before is applied now; the image was not deleted
    qtbot.waitUntil(lambda: grid.model.ids() == [newest], timeout=10_000)
    assert lib.item(newest).deleted_at is None
    # and the grid's actions work from now on
    grid.select_ids([newest])
    grid.delete_action.trigger()
    qtbot.waitUntil(lambda: lib.item(newest).deleted_at is not None, timeout=10_000)


def test_a_page_asked_for_before_attach_is_fetched_after(qtbot: QtBot, ui_env: UiEnv) -> None:
    lib = ui_env.rt.library
    bulk_items(lib, 400)
    window = frame(qtbot, ui_env)
    window.add_library(ui_env.rt.paths.thumbnails, preload=lambda: lib.first_page(50))
    model = window.library.model
    assert model.item_at(10) is not None and model.item_at(300) is None
    model.data(model.index(300, 0))  # a row scrolled into view: its page is wanted
    assert model.item_at(300) is None  # nothing to fetch it with yet
    window.attach(ui_env.controller)
    qtbot.waitUntil(lambda: model.item_at(300) is not None, timeout=10_000)


def test_without_a_first_page_the_grid_loads_once_attached(
    qtbot: QtBot, ui_env: UiEnv
) -> None:
    newest = add_item(ui_env.rt.library, "only one")
    window = frame(qtbot, ui_env)
    window.add_library(ui_env.rt.paths.thumbnails, preload=lambda: None)  # the read failed
    assert window.library.model.rowCount() == 0 and not window.library.model.loaded_once
    window.attach(ui_env.controller)
    qtbot.waitUntil(lambda: window.library.model.ids() == [newest], timeout=10_000)


def test_the_layout_saved_by_one_window_is_the_next_ones(
    qtbot: QtBot, ui_env: UiEnv, tmp_path: Path
) -> None:
    first = MainWindow(ui_env.controller)
    qtbot.addWidget(first)
    first.show()
    qtbot.waitExposed(first)
    first.split.setSizes([300, 1000])
    sizes = first.split.sizes()
    first.close()
    assert first.was_closed

    window = frame(qtbot, ui_env)
    window.add_library(ui_env.rt.paths.thumbnails)
    assert isinstance(window.split, QSplitter)
    # with placeholders the sizes come out near the saved ones (scaled by the splitter's
    # stretch factors, as the panels' minimum sizes are not known yet) ...
    qtbot.waitUntil(lambda: abs(window.split.sizes()[0] - sizes[0]) <= 40, timeout=5000)
    window.attach(ui_env.controller)
    # ... and exactly the saved ones once the panels are in
    qtbot.waitUntil(lambda: window.split.sizes() == sizes, timeout=5000)


def test_the_app_style_is_fusion() -> None:
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    from nbdesk.ui.main_window import apply_app_style

    apply_app_style(app)
    assert app.style().name().lower() == "fusion"



def test_the_opener_thread_gives_the_open_library_and_the_first_page(
    ui_env: UiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbdesk.app import _Opener

    newest = add_item(ui_env.rt.library, "opened on a thread")
    monkeypatch.setenv("NBDESK_HOME", str(ui_env.home))
    opener = _Opener()
    paths, settings, library = opener.opened()
    try:
        assert paths == ui_env.rt.paths and settings == ui_env.rt.settings
        assert library.item(newest).prompt == "opened on a thread"
        page = opener.first_page()
        assert page is not None and page.ids == [newest]
        assert page.items[newest].prompt == "opened on a thread"
    finally:
        library.close()


def test_a_library_that_cannot_be_read_is_reported_and_nothing_starts(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbdesk.app as app_module
    from nbdesk.core.library import LibraryError

    home = tmp_path / "home"
    db = Paths.resolve({"NBDESK_HOME": str(home)}).db
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("NBDESK_HOME", str(home))
    before = db.read_bytes()

    opener = app_module._Opener()
    with pytest.raises(LibraryError, match="is damaged"):
        opener.opened()

    shown: list[str] = []  # (the real dialog is modal: it would wait for a click)
    monkeypatch.setattr(QMessageBox, "critical",
                        staticmethod(lambda _parent, _title, text: shown.append(text)))
    assert app_module.main() == 3
    assert len(shown) == 1 and "is damaged" in shown[0]
    assert db.read_bytes() == before  # left untouched


def test_a_runtime_that_cannot_be_put_together_is_reported_and_the_library_closed(
    qtbot: QtBot, ui_env: UiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rest of the runtime (the key store) is put together after the grid's first
    screen: a failure there is said in a box, as one while opening is, and the library
    opened for the grid is closed."""
    import nbdesk.app as app_module
    from nbdesk.core.library import Library
    from nbdesk.core.runtime import Runtime

    def broken(*_args: object, **_kwargs: object) -> Runtime:
        raise RuntimeError("no key store module")

    closed: list[Library] = []
    close = Library.close

    def counted_close(self: Library) -> None:
        closed.append(self)
        close(self)

    shown: list[str] = []  # (the real dialog is modal: it would wait for a click)
    monkeypatch.setattr(QMessageBox, "critical",
                        staticmethod(lambda _parent, _title, text: shown.append(text)))
    monkeypatch.setattr(Runtime, "around", broken)
    monkeypatch.setattr(Library, "close", counted_close)
    monkeypatch.setenv("NBDESK_HOME", str(ui_env.home))
    with pytest.raises(RuntimeError, match="no key store module"):
        app_module.main()
    assert shown == ["nbdesk could not start: no key store module"]
    assert len(closed) == 1 and closed[0] is not ui_env.rt.library


def test_a_window_closed_while_it_starts_ends_the_app_in_order(
    qtbot: QtBot, ui_env: UiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import nbdesk.app as app_module
    import nbdesk.ui.main_window as mw

    built: list[mw.MainWindow] = []
    intervals: list[float] = []

    class ClosedAtOnce(mw.MainWindow):
        def show(self) -> None:
            super().show()
            built.append(self)
            intervals.append(sys.getswitchinterval())
            self.close()  # before its library is even opened

    monkeypatch.setenv("NBDESK_HOME", str(ui_env.home))
    monkeypatch.setattr(mw, "MainWindow", ClosedAtOnce)
    interval = sys.getswitchinterval()
    assert app_module.main() == 0
    (window,) = built
    assert window.was_closed and not hasattr(window, "library") and not window.attached
    assert intervals == [app_module.SWITCH_INTERVAL]  # the app's, while it ran
    assert sys.getswitchinterval() == interval
    # the layout it saved is readable by the next start
    assert (ui_env.rt.paths.settings_file.parent / "window.ini").is_file()


def test_a_window_closed_while_its_grid_is_built_ends_the_app_without_the_engine(
    qtbot: QtBot, ui_env: UiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbdesk.app as app_module
    import nbdesk.ui.main_window as mw

    add_item(ui_env.rt.library, "shown, then closed")
    built: list[mw.MainWindow] = []

    class ClosedWithItsGrid(mw.MainWindow):
        def add_library(self, *args: object, **kwargs: object) -> None:
            super().add_library(*args, **kwargs)  # type: ignore[arg-type]
            built.append(self)
            self.close()

    started: list[object] = []
    monkeypatch.setattr("nbdesk.core.runtime.start_engine",
                        lambda *a, **k: started.append(a))  # must not be reached
    monkeypatch.setenv("NBDESK_HOME", str(ui_env.home))
    monkeypatch.setattr(mw, "MainWindow", ClosedWithItsGrid)
    assert app_module.main() == 0
    (window,) = built
    assert window.was_closed and not window.attached and started == []
    assert window.library.model.rowCount() == 1  # its first page was shown


def test_an_empty_library_does_not_hold_the_start_up(
    qtbot: QtBot, ui_env: UiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no images the grid shows its empty-state text: the start goes on once that
    is painted, not after the wait for a viewport that is never shown."""
    import time

    import nbdesk.app as app_module
    import nbdesk.ui.main_window as mw

    marks: dict[str, float] = {}

    class Timed(mw.MainWindow):
        def add_library(self, *args: object, **kwargs: object) -> None:
            super().add_library(*args, **kwargs)  # type: ignore[arg-type]
            marks["grid"] = time.monotonic()

    def step_3(*_args: object) -> int:  # (the asyncio loop and the engine: not here)
        marks["step 3"] = time.monotonic()
        return 0

    monkeypatch.setenv("NBDESK_HOME", str(ui_env.home))
    monkeypatch.setattr(mw, "MainWindow", Timed)
    monkeypatch.setattr(app_module, "_run", step_3)
    assert app_module.main() == 0
    assert marks["step 3"] - marks["grid"] < 0.1  # (it once waited 0.2 s for this)


def test_the_first_screen_is_drawn_without_the_types_it_does_not_need(tmp_path: Path) -> None:
    """PySide builds a Qt type, with its enums, the first time it is used. The first
    screen (steps 1 and 2 for real, in a fresh interpreter) is drawn, a cell selected,
    without QStyle (6-12 ms), the types of the grid's actions and dialogs, of the message
    box or the message bar's button, or every
    QEvent subclass (what a Python event filter makes PySide build, ~4 ms); and without
    OpenSSL (hashlib), uuid or platformdirs loaded, and (until the runtime is put together,
    once the grid is drawn) neither the key store's module (and ``concurrent.futures``)
    nor the job classes."""
    import json
    import os
    import subprocess
    import sys

    from nbdesk.core.runtime import Runtime

    screen = Path(__file__).parents[1] / "offscreen.json"  # the suite's desktop-sized screen
    env = {**os.environ, "NBDESK_HOME": str(tmp_path / "home"),
           "QT_QPA_PLATFORM": f"offscreen:configfile={screen}"}
    rt = Runtime.open(env)
    try:
        for n in range(3):
            add_item(rt.library, f"image {n}")
    finally:
        rt.close()
    code = """
import json, sys
import nbdesk.app as app
from nbdesk.core.runtime import Runtime

around = Runtime.around
before_runtime = {}

def snapshot(*args, **kwargs):  # the runtime is put together after the first screen
    from PySide6.QtWidgets import QApplication
    from nbdesk.ui.main_window import MainWindow

    window, = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)]
    before_runtime["drawn"] = window.library.first_screen_shown
    before_runtime["modules"] = [m for m in ("nbdesk.core.secrets", "concurrent.futures",
                                             "nbdesk.core.jobs") if m in sys.modules]
    return around(*args, **kwargs)

Runtime.around = snapshot

def step_3(_app, rt, window, files):  # where the asyncio loop and the engine would start
    grid = window.library
    grid.select_ids(grid.model.ids()[:1])
    cells = []
    paint = grid.delegate.paint

    def counted(painter, option, index):
        cells.append(grid.list.selectionModel().isSelected(index))
        paint(painter, option, index)

    grid.delegate.paint = counted
    grid.list.viewport().repaint()  # every visible cell painted now, one selected
    import PySide6.QtCore as C, PySide6.QtGui as G, PySide6.QtWidgets as W
    made = {name for module in (C, G, W) for name in module.__dict__}
    print(json.dumps({
        "rows": grid.model.rowCount(), "cells": len(cells), "selected": sum(cells),
        "types": sorted(n for n in made if n in ("QStyle", "QKeySequence", "QFileDialog",
                        "QUrl", "QMessageBox", "QToolButton")
                        or n.startswith("QGraphicsScene")),
        "modules": sorted(m for m in ("hashlib", "uuid", "platformdirs", "asyncio")
                          if m in sys.modules), "before_runtime": before_runtime}))
    return 0

app._run = step_3
sys.exit(app.main())
"""
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["rows"] == 3 and seen["cells"] >= 3 and seen["selected"] == 1
    assert seen["types"] == []
    assert seen["modules"] == []
    assert seen["before_runtime"] == {"drawn": True, "modules": []}
