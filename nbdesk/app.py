"""Composition root of the desktop app: runtime, engine and window on a qasync loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PySide6.QtWidgets import QWidget

    from nbdesk.ui.main_window import MainWindow

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Move everything alive after start-up (modules, Qt wrappers, the first library
    page) out of the garbage collector's sight: a full collection over that heap stalls
    the GUI thread for ~40 ms, and those objects live as long as the app anyway."""
    gc.collect()
    gc.freeze()


def first_paint(widget: QWidget) -> asyncio.Future[None]:
    """A future resolved once ``widget`` has been painted for the first time."""
    from PySide6.QtCore import QEvent, QObject

    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Watch(QObject):
        def eventFilter(self, obj: QObject, event: QEvent) -> bool:
            if event.type() == QEvent.Type.Paint:
                if not future.done():
                    future.set_result(None)  # the waiter resumes after this paint
                widget.removeEventFilter(self)
                self.deleteLater()
            return False

    widget.installEventFilter(Watch(widget))
    return future


def first_screen(window: MainWindow) -> asyncio.Future[None]:
    """A future resolved once the library grid's first screen is drawn."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if window.library.first_screen_shown:
        future.set_result(None)
    else:
        window.library.firstScreenReady.connect(
            lambda: None if future.done() else future.set_result(None))
    return future


def main(argv: Sequence[str] = (), files: Sequence[str] = ()) -> int:
    """``files``: image paths to open (the command line's, "Open with nbdesk")."""
    import qasync
    from PySide6.QtWidgets import QApplication, QMessageBox

    from nbdesk.core.library import LibraryError
    from nbdesk.core.runtime import Runtime, setup_logging, start_engine

    app = QApplication.instance() or QApplication([sys.argv[0], *argv])
    assert isinstance(app, QApplication)
    app.setApplicationName("nbdesk")
    app.setOrganizationName("nbdesk")
    app.setApplicationDisplayName("nbdesk")
    # Closing the window ends run() below, which stops the engine in order; Qt must not
    # quit on its own first (qasync would then run leftover callbacks with no running
    # asyncio loop, in the middle of jobs).
    app.setQuitOnLastWindowClosed(False)
    try:
        rt = Runtime.open()
    except LibraryError as exc:
        QMessageBox.critical(None, "nbdesk", str(exc))
        return 3
    setup_logging(rt.paths)

    from nbdesk.ui.controller import Controller
    from nbdesk.ui.crash import CrashHandler
    from nbdesk.ui.launch import apply_identity, window_ready
    from nbdesk.ui.main_window import MainWindow, apply_app_style

    apply_app_style(app)
    apply_identity(app)
    crash = CrashHandler(rt.paths.log_dir)
    crash.install()

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)

    async def run() -> None:
        async with rt.engine(take_over=True, resume=True, start=False) as engine:
            window = MainWindow(Controller(rt, engine))
            window.closed.connect(closed.set)
            painted = first_paint(window)
            window.show()
            window_ready(window, files)
            # Paint first, then the library's first screen, then wire: the HTTP client
            # (imports and an SSL context on a worker thread, contending for the GIL),
            # resumed jobs. A submit before that still works (the client is made then).
            with contextlib.suppress(TimeoutError):  # never painted (minimized): go on
                await asyncio.wait_for(painted, 0.5)
                await asyncio.wait_for(first_screen(window), 1.0)
                await asyncio.wait_for(first_paint(window.library.list.viewport()), 0.2)
            await start_engine(engine, resume=True)
            asyncio.get_running_loop().call_later(1.0, settle_heap)
            await closed.wait()
        # leaving the block stopped the engine: unfinished jobs resume on the next start

    try:
        with loop:
            task = loop.create_task(run())
            while not task.done():
                # Qt may quit (last window closed, session end) before the engine has
                # stopped; run the loop again until the orderly shutdown has finished.
                with contextlib.suppress(RuntimeError):
                    loop.run_until_complete(task)
            task.result()
    finally:
        rt.close()
    return 0
