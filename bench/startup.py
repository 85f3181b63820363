"""Scenario child: process start to the first paint of the main window; and, for a warm
reopen, the window's show() to the first screen of the library grid fully drawn.

``python -m bench.startup bare``: a bare PySide6 window (import, QMainWindow shown, first
paint): the baseline. ``python -m bench.startup app [drawn]``: the real app
(``nbdesk.launcher.entry``, as the ``nbdesk`` command runs it; NBDESK_HOME from the
environment) with a thin probe subclass of
MainWindow. The window shows in steps: ``app`` reports the first paint of its frame, and
as context when the library grid's first screen was drawn and when every panel was built;
``app drawn`` stops once every visible grid cell shows its thumbnail.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, system-wide on Linux), so the parent can
subtract the moment it spawned this process. The child leaves with ``os._exit`` as soon as
it has its answer: shutdown is not part of the measurement.
"""

from __future__ import annotations

import time

T_INTERP = time.monotonic()  # the interpreter is up and running this module

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402


def _done(result: dict[str, Any]) -> None:
    result["interp_mono"] = T_INTERP
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


def bare() -> None:
    from PySide6.QtGui import QPaintEvent
    from PySide6.QtWidgets import QApplication, QMainWindow

    app = QApplication([sys.argv[0]])

    class Window(QMainWindow):
        def paintEvent(self, event: QPaintEvent) -> None:
            _done({"paint_mono": time.monotonic()})

    window = Window()
    window.resize(1360, 860)  # the size the app's window opens at
    window.show()
    app.exec()


def app(wait_drawn: bool, timeout: float = 20.0) -> None:
    from PySide6.QtCore import QPoint, QTimer
    from PySide6.QtGui import QPaintEvent

    import nbdesk.ui.main_window as mw
    from nbdesk.launcher import entry

    marks: dict[str, Any] = {}

    def all_visible_drawn(window: mw.MainWindow) -> int:
        """How many grid cells are visible, if every one of them has its item and its
        thumbnail (so this paint draws them all); 0 otherwise."""
        grid = window.library.list
        model = window.library.model
        if model.rowCount() == 0 or not grid.isVisible():
            return 0
        vp = grid.viewport()
        w, h = vp.width(), vp.height()
        cell = grid.gridSize()
        xs = [*range(1, w, max(1, cell.width() // 2)), w - 1]
        ys = [*range(1, h, max(1, cell.height() // 2)), h - 1]
        rows = {idx.row() for y in ys for x in xs
                if (idx := grid.indexAt(QPoint(x, y))).isValid()}
        for row in rows:
            item = model.item_at(row)
            if item is None or window.thumbnails.peek(item.id) is None:
                return 0
        return len(rows)

    def watch_cells(window: mw.MainWindow) -> None:
        """Notes the first paint of the grid that draws every visible cell with its
        thumbnail. It listens in the cells' painting (the grid's delegate, Python
        already), not through an event filter: a Python event filter makes PySide
        build every QEvent subclass's type (~4 ms) that the app itself no longer does."""
        delegate = window.library.delegate
        paint = delegate.paint

        def probe(painter: Any, option: Any, index: Any) -> None:
            # Thumbnails arrive between paints, never during one: if every visible cell
            # has one now, it had one when this paint began, a few cells earlier.
            if "drawn" not in marks:
                visible = all_visible_drawn(window)
                if visible:
                    marks["drawn"] = time.monotonic()
                    marks["visible_cells"] = visible
                    if wait_drawn:  # after this paint has been handled
                        QTimer.singleShot(0, lambda: _done({**marks, "after": time.monotonic()}))
            paint(painter, option, index)

        delegate.paint = probe  # type: ignore[method-assign]

    class ProbeWindow(mw.MainWindow):
        """The window shows in steps (its frame, then the library grid, then the other
        panels): ``paint`` is the frame's first paint, ``drawn`` the first screen of the
        grid fully drawn, ``attached`` every panel built and wired."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            QTimer.singleShot(int(timeout * 1000), lambda: _done({**marks, "timeout": True}))

        def add_library(self, *args: Any, **kwargs: Any) -> None:
            super().add_library(*args, **kwargs)
            marks["library_built"] = time.monotonic()
            watch_cells(self)

        def attach(self, *args: Any, **kwargs: Any) -> None:
            super().attach(*args, **kwargs)
            marks["attached"] = time.monotonic()
            if not wait_drawn:  # the start-up figure is the frame's paint; the rest: context
                QTimer.singleShot(0, lambda: _done({"paint_mono": marks["paint"], **marks}))

        def show(self) -> None:
            marks["show"] = time.monotonic()
            super().show()
            marks["shown"] = time.monotonic()

        def paintEvent(self, event: QPaintEvent) -> None:
            if "paint" not in marks:
                marks["paint"] = time.monotonic()
            super().paintEvent(event)

    mw.MainWindow = ProbeWindow  # type: ignore[misc]  # main() imports it from here
    entry([])  # what the nbdesk command, python -m nbdesk and main.py run


def phases(t_spawn: float) -> None:
    """For ``bench.probes startup-phases``: timestamps of the start-up's steps."""
    marks: dict[str, float] = {}

    def mark(key: str) -> None:
        marks.setdefault(key, time.monotonic())

    mark("interpreter up")
    import PySide6.QtWidgets  # noqa: F401

    mark("import PySide6.QtWidgets (the bare window's cost)")
    from PySide6.QtCore import QTimer

    import nbdesk.ui.main_window as mw
    from nbdesk.launcher import entry

    mark("import nbdesk.launcher, nbdesk.ui.main_window")

    class Probe(mw.MainWindow):
        def __init__(self, *a: Any, **k: Any) -> None:
            mark("main(): QApplication, style, icon")
            super().__init__(*a, **k)
            mark("1. the frame built")

        def show(self) -> None:
            super().show()
            mark("   show()")

        def paintEvent(self, event: Any) -> None:
            mark("   the frame painted")
            super().paintEvent(event)

        def add_library(self, *a: Any, **k: Any) -> None:
            import nbdesk.ui.library_view  # noqa: F401  (main imported it already)

            mark("2. runtime open, grid modules imported")
            super().add_library(*a, **k)
            mark("   the grid built (first page preloaded)")
            self.library.firstScreenReady.connect(
                lambda: mark("   first screen ready (items and thumbnails in)"))

        def attach(self, *a: Any, **k: Any) -> None:
            mark("3. asyncio, qasync, engine modules imported")
            super().attach(*a, **k)
            mark("   every panel built and wired")
            QTimer.singleShot(0, finish)

    def finish() -> None:
        mark("   back in the event loop")
        print(json.dumps({k: round((v - t_spawn) * 1000, 1) for k, v in marks.items()}))
        sys.stdout.flush()
        os._exit(0)

    mw.MainWindow = Probe  # type: ignore[misc]
    entry([])


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "bare"
    if mode == "bare":
        bare()
    elif mode == "phases":
        phases(float(sys.argv[2]))
    else:
        app(wait_drawn="drawn" in sys.argv[2:])
    _done({"error": "the window was never painted"})
