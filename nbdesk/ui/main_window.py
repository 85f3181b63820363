"""The main window: composer and queue on the left, viewer and library on the right.

It only arranges panels and routes signals between them; state lives in the engine,
the library and the Qt models, and every core call goes through the Controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QSettings, QTimer, Signal
from PySide6.QtWidgets import QApplication, QMainWindow, QWidget

if TYPE_CHECKING:  # imported where each step of the window is built (see MainWindow):
    import asyncio

    # the frame is painted before the Qt types the panels use are made (and their enums)
    from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QPaintEvent
    from PySide6.QtWidgets import QLabel, QSplitter, QStackedWidget, QSystemTrayIcon

    from nbdesk.core.jobs import Job
    from nbdesk.core.library import FirstPage, Item
    from nbdesk.core.runtime import Runtime
    from nbdesk.ui.composer import Composer
    from nbdesk.ui.controller import Controller
    from nbdesk.ui.library_view import LibraryView
    from nbdesk.ui.message_bar import MessageBar
    from nbdesk.ui.queue_view import QueueView
    from nbdesk.ui.thumbnails import ThumbnailCache
    from nbdesk.ui.viewer import ImageViewer

GRID_ICON = 160  # px (device independent) of a library thumbnail
MENUS = (("file", "&File"), ("edit", "&Edit"), ("queue", "&Queue"), ("help", "&Help"))

WELCOME = """
<h2>Welcome to nbdesk</h2>
<p>Generate and edit images with Google's Nano Banana models. Everything you make is kept
in a local library you can search offline, with its prompt, parameters and cost.</p>
<p><b>Try it now, without a key:</b> the provider is set to <i>Demo</i>, a built-in
simulator. Write a prompt on the left and press <b>Ctrl+Enter</b>.</p>
<p><b>Use your own account:</b> open <b>Settings</b> (Ctrl+,) and enter an Apiframe,
APIFree or Gemini API key. It is stored in your system keychain, never in a file.</p>
<p>Drop or paste images into the reference tray to edit or compose from them.</p>
"""


#: The window's first size (until it saves its own), on a screen big enough for it.
DEFAULT_SIZE = (1360, 860)


def default_size(available: tuple[int, int]) -> tuple[int, int]:
    """The window's first size on a screen whose free area (without panels and docks)
    is ``available``: ``DEFAULT_SIZE``, smaller on a small screen, so that the window
    with its frame and title bar fits (1366x768 laptops)."""
    width, height = available
    return min(DEFAULT_SIZE[0], width * 95 // 100), min(DEFAULT_SIZE[1], height * 88 // 100)


class MainWindow(QMainWindow):
    """Built in three steps, so that the app shows its window at once:

    1. ``MainWindow(layout_file=...)``: the frame (title, menu bar, status bar, the saved
       geometry), from nothing but Qt: the app paints it first.
    2. ``add_library(...)``: the panels' layout and the library grid, showing a first
       page read before the engine exists.
    3. ``attach(controller)``: the composer, queue and viewer, the menus' actions, and
       the controller behind every panel.

    ``MainWindow(controller)`` does all three at once (tests, tools).
    """

    closed = Signal()
    #: emitted as the window itself is painted, before its children in the same pass:
    #: a wait that quits on it (``nbdesk.app``) ends once that whole paint is done
    painted = Signal()

    # built by add_library
    thumbnails: ThumbnailCache
    library: LibraryView
    viewer_stack: QStackedWidget
    left: QSplitter
    right: QSplitter
    split: QSplitter
    # built by attach
    messages: MessageBar  # (hidden until there is a message: not in the first screen)
    controller: Controller
    rt: Runtime
    composer: Composer
    queue: QueueView
    viewer: ImageViewer
    welcome: QLabel
    settings_action: QAction
    undo_action: QAction
    key_labels: dict[str, QLabel]
    spend_label: QLabel
    offline_label: QLabel

    def __init__(self, controller: Controller | None = None, *,
                 layout_file: Path | None = None) -> None:
        super().__init__()
        self.setWindowTitle("nbdesk")
        self.setObjectName("nbdeskMainWindow")
        self.resize(*default_size(self.screen().availableGeometry().size().toTuple()))
        if layout_file is None:
            if controller is None:
                raise TypeError("MainWindow needs a controller or a layout file")
            layout_file = controller.layout_file
        self._layout_file = layout_file
        self._settings_dialog: QWidget | None = None
        self._spend_running = self._spend_again = False
        self._tray: QSystemTrayIcon | None = None
        self._splitters: list[QSplitter] = []
        self.attached = False
        #: set once the window was closed (the user may close it while it starts)
        self.was_closed = False
        # The menu bar and the status bar exist from the first paint, so nothing moves
        # when the rest arrives.
        bar = self.menuBar()
        self._menus = {key: bar.addMenu(title) for key, title in MENUS}
        for menu in self._menus.values():  # greyed until attach fills them
            menu.menuAction().setEnabled(False)
        self.statusBar().showMessage("Opening the library…")
        self._restore_geometry()
        if controller is not None:
            self.add_library(controller.thumbnail_dir)
            self.attach(controller)

    def add_library(self, thumbnail_dir: Path,
                    preload: Callable[[], FirstPage | None] | None = None) -> None:
        """Step 2: the layout and the grid. ``preload`` (called once the grid's modules
        are imported) gives the first page if it was read meanwhile."""
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QSplitter, QStackedWidget, QVBoxLayout

        from nbdesk.ui.library_view import LibraryView
        from nbdesk.ui.thumbnails import ThumbnailCache

        # Thumbnails are decoded at the grid's display size in worker threads, so the
        # GUI thread only wraps them (scaling them here cost most of a scroll's time).
        self.thumbnails = ThumbnailCache(
            thumbnail_dir, size=round(GRID_ICON * self.devicePixelRatioF()))
        self.library = LibraryView(None, self.thumbnails, icon_size=GRID_ICON,
                                   preload=None if preload is None else preload())
        self.viewer_stack = QStackedWidget()  # the welcome text and the viewer: attach

        self.left = QSplitter(Qt.Orientation.Vertical)
        self.left.setObjectName("leftSplit")
        self.left.addWidget(QWidget())  # the composer's place (attach)
        self.left.addWidget(QWidget())  # the queue's
        self.left.setStretchFactor(0, 3)
        self.left.setStretchFactor(1, 2)
        self.right = QSplitter(Qt.Orientation.Vertical)
        self.right.setObjectName("rightSplit")
        self.right.addWidget(self.viewer_stack)
        self.right.addWidget(self.library)
        self.right.setStretchFactor(0, 3)
        self.right.setStretchFactor(1, 2)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.setObjectName("mainSplit")
        self.split.addWidget(self.left)
        self.split.addWidget(self.right)
        self.split.setStretchFactor(0, 2)
        self.split.setStretchFactor(1, 3)
        self.split.setSizes([520, 840])
        self.left.setSizes([430, 400])
        self.right.setSizes([500, 340])
        self._splitters = [self.split, self.left, self.right]
        central = QWidget()
        layout = self._central_layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.addWidget(self.split, 1)
        self.setCentralWidget(central)
        self._restore_splitters()  # near the saved sizes: exact once the panels are in

    def attach(self, controller: Controller) -> None:
        """Step 3: the other panels, the menus' actions, the status bar's labels; from
        now on every panel works through ``controller``."""
        from PySide6.QtCore import Qt

        from nbdesk.ui.composer import Composer
        from nbdesk.ui.labels import WrappedTextLabel
        from nbdesk.ui.message_bar import MessageBar
        from nbdesk.ui.queue_view import QueueView
        from nbdesk.ui.viewer import ImageViewer

        self.controller = controller
        self.messages = MessageBar()
        self._central_layout.insertWidget(0, self.messages)  # above the panels
        self.composer = Composer(controller)
        self.queue = QueueView(controller)
        self.viewer = ImageViewer(controller, self.thumbnails)
        self.welcome = WrappedTextLabel(WELCOME)  # (word-wrapped)
        self.welcome.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.welcome.setMargin(32)
        self.welcome.setObjectName("welcome")
        self.viewer_stack.addWidget(self.welcome)
        self.viewer_stack.addWidget(self.viewer)
        for index, panel in enumerate((self.composer, self.queue)):
            placeholder = self.left.replaceWidget(index, panel)
            if placeholder is not None:
                placeholder.deleteLater()

        self._build_menus()
        for menu in self._menus.values():
            menu.menuAction().setEnabled(True)
        self._build_status_bar()
        self._tray = self._make_tray()

        controller.message.connect(self._on_message)
        controller.jobFinished.connect(self._on_job_finished)
        controller.libraryChanged.connect(self.refresh_spend)
        controller.itemsAdded.connect(lambda _ids: self.refresh_spend())
        self.messages.undoRequested.connect(controller.undo_trash)
        self.library.itemActivated.connect(self.open_item)
        self.queue.jobActivated.connect(self._open_job)
        self.queue.offlineChanged.connect(self.offline_label.setVisible)
        self.viewer.currentChanged.connect(lambda _id: self.viewer_stack.setCurrentIndex(1))
        self.library.attach(controller)

        self._let_combos_shrink()
        # Restored into placeholders, the splitters' sizes came out scaled by their
        # stretch factors; the panels' minimum sizes are known now.
        self._restore_splitters()
        self.statusBar().clearMessage()
        self.queue.reload()
        self.attached = True
        # The spend sum and the key check (keyring's backend discovery: tens of ms of
        # Python on another thread, contending for the GIL) wait until the library's
        # first screen is drawn, or a second at most.
        self._keys_checked = False
        if self.library.first_screen_shown:
            QTimer.singleShot(0, self._first_key_check)
        else:
            self.library.firstScreenReady.connect(self._first_key_check)
            QTimer.singleShot(1000, self._first_key_check)

    def _first_key_check(self) -> None:
        if not self._keys_checked:
            self._keys_checked = True
            self.controller.keys.start()
            self.refresh_spend()

    # ------------------------------------------------------------------ building

    def _build_menus(self) -> None:
        from PySide6.QtGui import QKeySequence

        file_menu = self._menus["file"]
        self.settings_action = self._add(file_menu, "&Settings…", self.open_settings,
                                         QKeySequence("Ctrl+,"))
        file_menu.addSeparator()
        self._add(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        edit = self._menus["edit"]
        self.undo_action = self._add(edit, "&Undo delete", self.controller.undo_trash,
                                     QKeySequence.StandardKey.Undo)
        edit.addSeparator()
        self._add(edit, "Focus &prompt", self.composer.focus_prompt, QKeySequence("Ctrl+L"))
        self._add(edit, "&Search library", self._focus_search, QKeySequence.StandardKey.Find)
        queue = self._menus["queue"]
        queue.addAction(self.queue.pause_action)
        queue.addAction(self.queue.cancel_all_action)
        queue.addSeparator()
        queue.addAction(self.queue.retry_action)
        queue.addAction(self.queue.cancel_action)
        help_menu = self._menus["help"]
        self._add(help_menu, "&About nbdesk", self._about)

    def _add(self, menu: object, text: str, slot: object,
             shortcut: QKeySequence | QKeySequence.StandardKey | None = None) -> QAction:
        from PySide6.QtGui import QAction

        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        if callable(slot):
            action.triggered.connect(slot)
        menu.addAction(action)  # type: ignore[attr-defined]
        self.addAction(action)
        return action

    def _build_status_bar(self) -> None:
        from PySide6.QtWidgets import QLabel

        from nbdesk.api.capabilities import PROVIDERS
        from nbdesk.core.jobs import OFFLINE_NOTE

        status = self.statusBar()
        # Said once while any job waits for the network, not per job nor per attempt.
        self.offline_label = QLabel(OFFLINE_NOTE)
        self.offline_label.setObjectName("offlineLabel")
        self.offline_label.setStyleSheet("color: #d98b1f; font-weight: bold;")
        self.offline_label.setToolTip(
            "Jobs whose request cannot leave this computer (no network, the provider "
            "unreachable) wait in the queue: nothing was sent or paid. They are sent when "
            "the network is back, or fail at the job timeout.")
        status.addPermanentWidget(self.offline_label)
        self.offline_label.hide()
        self.key_labels = {}
        for pid in PROVIDERS:
            label = QLabel()
            self.key_labels[pid] = label
            status.addPermanentWidget(label)
            self._show_key(pid)
        self.controller.keys.changed.connect(self._show_key)
        self.spend_label = QLabel("Spent: $0.00")
        self.spend_label.setToolTip("Total cost of the images in the library")
        status.addPermanentWidget(self.spend_label)

    def _make_tray(self) -> QSystemTrayIcon | None:
        from PySide6.QtGui import QIcon
        from PySide6.QtWidgets import QSystemTrayIcon

        if not QSystemTrayIcon.isSystemTrayAvailable():
            return None
        tray = QSystemTrayIcon(self.windowIcon() or QIcon(), self)
        tray.setToolTip("nbdesk")
        tray.show()
        return tray

    def _let_combos_shrink(self) -> None:
        """Combo boxes size to a few characters, not their longest entry, so the window
        fits small screens; the popup still shows the entries in full."""
        from PySide6.QtWidgets import QComboBox

        for combo in self.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)

    # ------------------------------------------------------------------ behaviour

    def _focus_search(self) -> None:
        self.library.focus_search()

    def open_item(self, item_id: int) -> None:
        ids = self.library.visible_ids()
        self.viewer.set_items(ids if item_id in ids else [item_id], item_id)
        self.viewer_stack.setCurrentIndex(1)

    def _open_job(self, job: Job) -> None:
        self.controller.then(self.controller.items_for_job(job.id), self,
                             self._open_first, what="opening the image")

    def _open_first(self, items: list[Item]) -> None:
        if items:
            self.open_item(items[0].id)

    def _on_message(self, level: str, text: str) -> None:
        self.messages.show_message(level, text)
        if level != "error":
            self.statusBar().showMessage(text, 8000)

    def _on_job_finished(self, job: Job) -> None:
        from PySide6.QtWidgets import QSystemTrayIcon

        from nbdesk.core.jobs import JobState

        if job.state is JobState.FAILED:
            self.controller.message.emit("error", f"Job failed: {job.error}")
        else:
            self.statusBar().showMessage(f"Finished: {job.prompt[:60]}", 8000)
        if (self._tray is not None and not self.isActiveWindow()
                and self.controller.settings.notify_on_finish):
            title = "Image ready" if job.state is JobState.COMPLETED else "Job failed"
            self._tray.showMessage(title, job.prompt[:120], QSystemTrayIcon.MessageIcon.Information,
                                   5000)

    def _show_key(self, provider_id: str) -> None:
        from nbdesk.api.capabilities import PROVIDERS
        from nbdesk.ui.models.keys import KeyState

        caps = PROVIDERS[provider_id]
        info = self.controller.keys.status(provider_id)
        label = self.key_labels[provider_id]
        label.setToolTip(info.message or f"Where the {caps.label} API key comes from")
        if info.state is KeyState.CHECKING:
            label.setText(f"{caps.label}: …")
        elif info.state.failed:  # keychain missing / timed out: say so
            label.setText(f"{caps.label}: keychain unavailable")
        elif info.state is KeyState.ENV:
            label.setText(f"{caps.label}: key from {caps.env_key}")
        elif info.state is KeyState.KEYCHAIN:
            label.setText(f"{caps.label}: key ✓")
        else:
            label.setText(f"{caps.label}: no key (Demo available)")

    def refresh_spend(self) -> None:
        """Add up the costs again; calls while a sum is running coalesce into one more."""
        if self._spend_running:
            self._spend_again = True
            return
        self._spend_running = True
        self._spend_again = False
        task = self.controller.then(self.controller.total_cost(), self.spend_label,
                                    self._show_spend, what="adding up costs")
        task.add_done_callback(self._spend_done)

    def _show_spend(self, total: float) -> None:
        self.spend_label.setText(f"Spent: ${total:.2f}")

    def _spend_done(self, task: asyncio.Task[None]) -> None:
        self._spend_running = False
        failed = task.cancelled() or task.exception() is not None  # (reported by spawn)
        if self._spend_again and not failed and not self.was_closed:
            self.refresh_spend()  # costs changed while adding up: once more

    def open_settings(self) -> None:
        from nbdesk.ui.settings_dialog import SettingsDialog

        if self._settings_dialog is None:
            dialog = SettingsDialog(self.controller, self)
            dialog.settingsSaved.connect(lambda _s: self.controller.unblock_jobs())
            dialog.finished.connect(self._settings_closed)
            self._settings_dialog = dialog
        self._settings_dialog.open()  # type: ignore[attr-defined]

    def _settings_closed(self) -> None:
        self._settings_dialog = None

    def _about(self) -> None:
        from nbdesk import __version__

        self.controller.info(f"nbdesk {__version__} — a desktop studio for Nano Banana; "
                             f"library at {self.controller.library_root}")

    # ------------------------------------------------------------------ layout

    def _qsettings(self) -> QSettings:
        return QSettings(str(self._layout_file), QSettings.Format.IniFormat)

    def _restore_geometry(self) -> None:
        s = self._qsettings()
        for key, restore in (("geometry", self.restoreGeometry),
                             ("state", self.restoreState)):
            value = s.value(key)
            if isinstance(value, QByteArray):
                restore(value)

    def _restore_splitters(self) -> None:
        s = self._qsettings()
        for splitter in self._splitters:
            value = s.value(f"splitters/{splitter.objectName()}")
            if isinstance(value, QByteArray):
                splitter.restoreState(value)

    def save_layout(self) -> None:
        s = self._qsettings()
        s.setValue("geometry", self.saveGeometry())
        s.setValue("state", self.saveState())
        for splitter in self._splitters:
            s.setValue(f"splitters/{splitter.objectName()}", splitter.saveState())
        s.setValue("saved_at", time.time())
        s.sync()

    def paintEvent(self, event: QPaintEvent) -> None:
        super().paintEvent(event)
        self.painted.emit()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_layout()
        if self._tray is not None:
            self._tray.hide()
        self.was_closed = True
        self.closed.emit()
        super().closeEvent(event)


def apply_app_style(app: QApplication) -> None:
    """Fusion follows the system palette (light or dark) the same way on every platform."""
    app.setStyle("Fusion")
