"""Composition root of the desktop app: runtime, engine and window on a qasync loop."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported as each step of the start needs them (see main)
    import asyncio

    from PySide6.QtCore import SignalInstance
    from PySide6.QtWidgets import QApplication

    from nbdesk.core.library import FirstPage, Library
    from nbdesk.core.paths import Paths
    from nbdesk.core.runtime import Runtime
    from nbdesk.core.settings import Settings
    from nbdesk.ui.main_window import MainWindow
    from nbdesk.ui.single_instance import Handoff, InstanceServer


def settle_heap() -> None:
    """Move everything alive after start-up (modules, Qt wrappers, the first library
    page) out of the garbage collector's sight: a full collection over that heap stalls
    the GUI thread for ~40 ms, and those objects live as long as the app anyway."""
    gc.collect()
    gc.freeze()


def first_paint(window: MainWindow) -> asyncio.Future[None]:
    """A future resolved once ``window`` has painted again."""
    import asyncio

    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def painted() -> None:
        if not future.done():
            future.set_result(None)

    window.painted.connect(painted)
    future.add_done_callback(lambda _f: _disconnect(window.painted, painted))
    return future


def _disconnect(signal: SignalInstance, slot: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # (already gone, or its object deleted)
        signal.disconnect(slot)


def _pump(timeout: float, *, signals: Sequence[SignalInstance] = (),
          until: Callable[[], bool] | None = None) -> None:
    """Run Qt's event loop (there is no asyncio loop yet) until one of ``signals`` is
    emitted, ``until()`` holds (checked every 2 ms), or ``timeout`` seconds have passed.

    (Waits for a paint are a signal of the window's, not an event filter: a Python event
    filter makes PySide build every QEvent subclass's type, ~4 ms before the first paint.)
    """
    from PySide6.QtCore import QEventLoop, QTimer

    if until is not None and until():
        return
    loop = QEventLoop()
    QTimer.singleShot(int(timeout * 1000), loop, loop.quit)
    if until is not None:  # (a condition another thread may make true: looked at often)
        poll = QTimer(loop)
        poll.timeout.connect(lambda: loop.quit() if until() else None)
        poll.start(2)
    for signal in signals:
        signal.connect(loop.quit)
    try:
        loop.exec()
    finally:  # nothing of this wait outlives it
        for signal in signals:
            _disconnect(signal, loop.quit)


class _Opener:
    """Finds the library (paths and settings: its folder may be a setting), opens its
    database and reads the grid's first page on its own thread, while the GUI thread
    paints the frame (mostly in Qt's C++ code) and imports and builds the grid. The rest
    of the runtime (the key store) is put together once the grid is drawn."""

    def __init__(self) -> None:
        import threading

        self._done = threading.Event()
        self._opened: tuple[Paths, Settings, Library] | None = None
        self.error: BaseException | None = None
        self._page: FirstPage | None = None
        threading.Thread(target=self._run, name="nbdesk-open", daemon=True).start()

    def _run(self) -> None:
        # Only modules without Qt are imported here: the GUI thread imports the grid's
        # meanwhile, and PySide's lazily made types must not be made from two threads.
        try:
            from nbdesk.core.library import Library
            from nbdesk.core.runtime import locate

            paths, settings = locate()
            library = Library(paths)
            self._opened = (paths, settings, library)
        except BaseException as exc:  # raised on the GUI thread by opened()
            self.error = exc
            self._done.set()
            return
        try:
            self._page = library.first_page()
        except Exception:  # the grid reads it again the usual way, and reports errors
            import logging  # (loaded with the core already)

            logging.getLogger(__name__).exception("reading the first page of the library")
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def opened(self) -> tuple[Paths, Settings, Library]:
        """The paths, the settings and the open library; raises what opening them
        raised (LibraryError: the library cannot be opened, a message for the user)."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        assert self._opened is not None
        return self._opened

    def first_page(self) -> FirstPage | None:
        self._done.wait()
        return self._page


#: The GIL's switch interval in the app (Python's default: 5 ms). Every call from Qt's
#: C++ into Python (a model's data(), a delegate's paint, a timer) needs the GIL; while
#: a worker thread (the database, downloads, thumbnails, the opener) holds it, the GUI
#: thread waits up to this long for each. A GUI wants short waits more than throughput.
SWITCH_INTERVAL = 0.001


def tune_process() -> float:
    """Apply the app's process settings (``SWITCH_INTERVAL``); returns the previous
    switch interval. The benchmarks that build the window themselves call it too."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    return previous


def main(argv: Sequence[str] = (), files: Sequence[str] = ()) -> int:
    """``files``: image paths to open (the command line's, "Open with nbdesk").

    The window shows in steps (see ``MainWindow``): its frame is painted before anything
    but Qt is imported; then the library grid, with its first page read on another
    thread meanwhile; once its first screen is drawn, the other panels, the asyncio
    loop, the engine, and last the HTTP client and resumed jobs."""
    previous = tune_process()
    try:
        return _start(argv, files)
    finally:  # (main may run inside another program: its tests)
        sys.setswitchinterval(previous)


def _start(argv: Sequence[str], files: Sequence[str]) -> int:
    from PySide6.QtWidgets import QApplication  # (QMessageBox where a start fails: ~3 ms)

    from nbdesk.core.paths import Paths
    from nbdesk.ui.launch import apply_identity
    from nbdesk.ui.main_window import MainWindow, apply_app_style
    from nbdesk.ui.single_instance import InstanceServer

    existing = QApplication.instance()
    if existing is None:  # Fusion from the start (setStyle later makes a second style: ~10 ms)
        app = QApplication([sys.argv[0], "-style", "fusion", *argv])
    else:
        assert isinstance(existing, QApplication)
        app = existing
        apply_app_style(app)
    app.setApplicationName("nbdesk")
    app.setOrganizationName("nbdesk")
    app.setApplicationDisplayName("nbdesk")
    # Closing the window ends run() below, which stops the engine in order; Qt must not
    # quit on its own first (qasync would then run leftover callbacks with no running
    # asyncio loop, in the middle of jobs).
    app.setQuitOnLastWindowClosed(False)
    apply_identity(app)
    # 0. another window on this library: it takes the files, and this launch ends
    handed = _hand_off_early(files)
    if handed is not None:
        return handed

    # 1. the frame
    window = MainWindow(layout_file=Paths.resolve().settings_file.parent / "window.ini")
    window.show()
    # The opener starts once the frame is painted (its imports would hold the GIL while
    # it is), or after 0.1 s (a window not shown at once: minimized, another desktop).
    _pump(0.1, signals=[window.painted, window.closed])
    opener = _Opener()

    # 2. the library grid
    from nbdesk.core.library import LibraryError
    from nbdesk.core.runtime import Runtime, setup_logging
    from nbdesk.ui.library_view import LibraryView  # noqa: F401  (imported while it opens)

    while not opener.done():  # the frame stays responsive meanwhile (the database may
        _pump(1.0, until=opener.done)  # be locked by another nbdesk process for a while)
    try:
        paths, settings, opened_library = opener.opened()
    except LibraryError as exc:
        _could_not_start(window, str(exc))
        return 3
    except Exception as exc:  # a bug, or the system's: said, then reported as the CLI does
        _could_not_start(window, f"nbdesk could not start: {exc}")
        raise
    rt: Runtime | None = None
    server: InstanceServer | None = None
    try:
        from nbdesk.ui.crash import CrashHandler

        crash = CrashHandler(paths.log_dir)
        crash.install()
        if not window.was_closed:  # (closed while it started: nothing more to show)
            window.add_library(paths.thumbnails, preload=opener.first_page)
            library = window.library
            # The other panels wait for the grid's first screen (its thumbnails are
            # decoded on worker threads, which the next imports would slow), but not
            # long: thumbnails not in the cache yet take a while to make.
            _pump(0.3, signals=[library.firstScreenReady, window.closed],
                  until=lambda: library.first_screen_shown)
            # Drawn now, before the next step's imports (laid out first: the grid may
            # have been ready before its layout was done). Never shown, e.g. minimized:
            # nothing is drawn, and the start goes on.
            app.sendPostedEvents()
            shown = library.empty_label if library.is_empty_state() else library.list.viewport()
            if shown.isVisible():
                shown.repaint()
        if window.was_closed:
            return 0
        # One window per library: listen for later launches, unless another window has
        # just started (then the files go to it, and this one closes).
        claimed = _claim(paths, files)
        if not isinstance(claimed, InstanceServer) and claimed is not None:
            window.close()
            return _said(claimed, files)
        server = claimed
        pending = list(files)  # and what later launches hand over until the panels are in
        if server is not None:
            from nbdesk.ui.launch import files_from_another_launch

            server.filesReceived.connect(
                lambda got: files_from_another_launch(window, got, pending))
            window.closed.connect(server.close)
        try:  # the rest of the runtime (the key store), now that the grid is drawn
            from nbdesk.demo import start_demo  # (the simulator loads at first Demo use)

            rt = Runtime.around(paths, settings, opened_library, demo=start_demo)
            setup_logging(rt.paths)
        except Exception as exc:
            _could_not_start(window, f"nbdesk could not start: {exc}")
            raise
        return _run(app, rt, window, pending)
    finally:
        if server is not None:
            server.close()
        if rt is not None:
            rt.close()
        else:
            opened_library.close()


def _hand_off_early(files: Sequence[str]) -> int | None:
    """Before the window is shown: if a window of this user may be running (a look at
    the sockets' folder, nothing more in the common case), find this library's and hand
    it ``files``. The exit code if it took them (or is there but did not answer), None
    to go on starting."""
    from nbdesk.ui import single_instance

    if not single_instance.maybe_running():
        return None
    from nbdesk.core.runtime import locate

    paths, _settings = locate()
    address = single_instance.Address.for_library(paths.root)
    if address is None:
        return None
    handed = single_instance.hand_off(address, files)
    return None if handed is single_instance.Handoff.NO_WINDOW else _said(handed, files)


def _claim(paths: Paths, files: Sequence[str]) -> InstanceServer | Handoff | None:
    """Listen as the library's window (``ui.single_instance.claim``); None: no guard."""
    from nbdesk.ui import single_instance

    address = single_instance.Address.for_library(paths.root)
    return None if address is None else single_instance.claim(address, files)


def _said(handed: Handoff, files: Sequence[str]) -> int:
    """Say on stderr what became of a launch that found a window on its library (it
    took the files, or did not answer); the launch's exit code."""
    from nbdesk.ui.single_instance import Handoff, outcome_text

    print(outcome_text(handed, files), file=sys.stderr, flush=True)
    return 0 if handed is Handoff.HANDED else 1


def _could_not_start(window: MainWindow, text: str) -> None:
    """Say why in a box (its type is made only then), and close the window."""
    from PySide6.QtWidgets import QMessageBox

    QMessageBox.critical(window, "nbdesk", text)
    window.close()


def _run(app: QApplication, rt: Runtime, window: MainWindow, files: Sequence[str]) -> int:
    """3. the rest of the window, the engine, the asyncio loop."""
    import asyncio

    import qasync

    from nbdesk.core.runtime import start_engine
    from nbdesk.ui.controller import Controller
    from nbdesk.ui.launch import window_ready

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)
    window.closed.connect(closed.set)
    log = logging.getLogger("nbdesk")

    async def run() -> None:
        if window.was_closed:  # (closed as this step began: the engine need not start)
            return
        async with rt.engine(take_over=True, resume=True, start=False) as engine:
            window.attach(Controller(rt, engine))
            window_ready(window, files)
            # The new panels are painted before the HTTP client is made (imports and an
            # SSL context on a worker thread, contending for the GIL) and jobs resume.
            # A submit before that still works (the client is made then).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_paint(window), 0.5)
            if closed.is_set():
                return
            await start_engine(engine, resume=True)
            log.info("started: library %s", rt.paths.root)
            asyncio.get_running_loop().call_later(1.0, settle_heap)
            await closed.wait()
        # leaving the block stopped the engine: unfinished jobs resume on the next start
        log.info("stopped")

    restore_signals = close_on_signals(window)
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
        restore_signals()
    return 0


def close_on_signals(window: MainWindow) -> Callable[[], None]:
    """SIGTERM (a logout, a service manager, ``kill``) and SIGINT (Ctrl+C in the
    terminal that started the app) close the window as its close button does: the
    layout is saved and the engine stops in order (jobs still running at the provider
    resume at the next start, as after a crash). Returns the undo.

    Python runs a signal's handler only when it next runs Python code, and Qt's loop
    may be asleep in C++: the signal is also written to a socket (``set_wakeup_fd``)
    whose notifier wakes the loop. POSIX only (Windows ends a session through Qt's
    own messages)."""
    if sys.platform == "win32":
        return lambda: None
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier, QTimer

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read, window)

    def drain() -> None:  # (the handler itself has run by now: this is Python code)
        with contextlib.suppress(OSError):
            while reader.recv(64):
                pass

    def on_signal(_signum: int, _frame: object) -> None:
        QTimer.singleShot(0, window.close)  # from the loop, not inside whatever ran

    notifier.activated.connect(drain)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def restore() -> None:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        notifier.setEnabled(False)
        notifier.deleteLater()
        reader.close()
        writer.close()

    return restore
