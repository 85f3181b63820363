"""What the app does around its window as it starts: its icon and desktop identity, and
the image files it was asked to open ("Open with nbdesk", ``nbdesk gui FILE...``).

A file that is an image of the library opens in the viewer; any other file goes to the
composer's reference tray (checked there like a dropped file), ready for a prompt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtGui import QGuiApplication, QIcon

from nbdesk.desktop import DESKTOP_NAME, ICON_SIZES, icon_png, local_path

if TYPE_CHECKING:
    import asyncio

    from nbdesk.ui.main_window import MainWindow


def app_icon() -> QIcon:
    """The nbdesk icon, every rendered size (16-512 px): Qt picks the closest."""
    icon = QIcon()
    for size in ICON_SIZES:
        path = icon_png(size)
        if path.is_file():
            icon.addFile(str(path))
    return icon


def apply_identity(app: QGuiApplication) -> None:
    """Window and taskbar icon; the desktop file name lets Wayland/X11 docks match the
    window to the installed launcher (and its icon)."""
    app.setWindowIcon(app_icon())
    app.setDesktopFileName(DESKTOP_NAME)


@dataclass
class Opened:
    viewer: list[int] = field(default_factory=list)  # library item ids shown
    references: list[str] = field(default_factory=list)  # paths offered to the tray
    missing: list[str] = field(default_factory=list)  # arguments that are not files


def open_files(window: MainWindow, args: Sequence[str]) -> asyncio.Task[Opened]:
    """Open ``args`` (paths or file:// URLs) in the window; see the module docstring."""
    return window.controller.spawn(_open(window, list(args)), what="opening the files")


async def _open(window: MainWindow, args: list[str]) -> Opened:
    controller = window.controller
    done = Opened()
    for arg in args:
        path = local_path(arg)
        if path is None or not path.is_file():
            done.missing.append(arg)
            continue
        item = await controller.item_for_path(path)
        if item is not None:
            done.viewer.append(item.id)
        else:
            done.references.append(str(path))
    if done.viewer:
        if len(done.viewer) == 1:
            window.open_item(done.viewer[0])
        else:
            window.viewer.set_items(done.viewer, done.viewer[0])
            window.viewer_stack.setCurrentIndex(1)
    if done.references:
        window.composer.focus_prompt()
        await window.composer.tray.add_sources(done.references)
    if done.missing:
        controller.error("Cannot open " + ", ".join(done.missing) + ": not a file")
    return done


def bring_to_front(window: MainWindow) -> None:
    """Show the window over the others, restored if it was minimized (the desktop may
    still only flag it: focus-stealing prevention)."""
    from PySide6.QtCore import Qt

    state = window.windowState()
    if state & Qt.WindowState.WindowMinimized:
        window.setWindowState(state & ~Qt.WindowState.WindowMinimized)
    window.show()
    window.raise_()
    window.activateWindow()


def files_from_another_launch(window: MainWindow, files: Sequence[str],
                              waiting: list[str]) -> None:
    """Another launch on this library handed ``files`` over (``ui.single_instance``):
    the window comes to the front and opens them as it opens its own command line's;
    until its panels are there (``window_ready``), they wait in ``waiting``."""
    if window.was_closed:
        return
    bring_to_front(window)
    if not files:
        return
    if not window.attached:
        waiting.extend(files)
        return
    task = open_files(window, files)
    task.add_done_callback(lambda t: _log_handed(window, t))


def _log_handed(window: MainWindow, task: asyncio.Task[Opened]) -> None:
    if task.cancelled() or task.exception() is not None:
        return  # (the controller's spawn reported it)
    done = task.result()
    logging.getLogger("nbdesk").info(
        "files from another launch: %d in the viewer, %d offered to the tray "
        "(%d there now), %d not files", len(done.viewer), len(done.references),
        len(window.composer.tray.sources()), len(done.missing))


def window_ready(window: MainWindow, files: Sequence[str],
                 env: Mapping[str, str] | None = None) -> None:
    """Called by the app once its window is shown."""
    opening = open_files(window, files) if files else None
    environ = os.environ if env is None else env
    report = environ.get("NBDESK_SMOKE", "").strip()
    if report:
        from nbdesk.ui.smoke import start

        start(window, Path(report), opening,
              scenario=environ.get("NBDESK_SMOKE_SCENARIO", "demo"))
