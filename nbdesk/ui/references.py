"""The composer's tray of reference images: a strip of thumbnails.

Sources arrive by drop (file manager: file URLs; browser: http(s) URLs or image data;
the library: file URLs), by paste (an image, file URLs or URL text), from the "Add…"
file dialog or through ``add``. Every candidate is checked off the GUI thread with
``prepare_reference`` (the same check the engine runs before it sends anything), so what
the tray holds is what the job will carry; a refusal is one clear message, inline and on
``controller.message``, and leaves the tray as it was.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import shiboken6
from PySide6.QtCore import QMimeData, QPoint, QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QGuiApplication,
    QIcon,
    QImage,
    QImageReader,
    QKeyEvent,
    QKeySequence,
    QPainter,
    QPixmap,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from nbdesk.api.base import InputError
from nbdesk.api.images import prepare_reference

if TYPE_CHECKING:
    from nbdesk.ui.controller import Controller

#: Thumbnail edge in pixels.
THUMB = 56
DEFAULT_MAX = 14
SourceRole = Qt.ItemDataRole.UserRole + 1
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.gif *.bmp *.tif *.tiff)"
_ERROR_STYLE = "color: #c0392b;"
_NOTE_STYLE = "color: palette(mid);"


def is_url(text: str) -> bool:
    """Whether ``text`` names a URL (any scheme) rather than a local path.

    A one-letter "scheme" is a Windows drive (``C:\\pictures``)."""
    found = _SCHEME.match(text.strip())
    return found is not None and len(found.group(1)) > 1


def normalize(source: str) -> str:
    """The form a source is kept in: URLs as given, paths absolute with ``~`` expanded.

    Pure string work (no file system access), so it is safe on the GUI thread."""
    text = source.strip()
    if is_url(text):
        return text
    return os.path.normpath(os.path.abspath(os.path.expanduser(text)))


def _label(source: str) -> str:
    if is_url(source):
        return QUrl(source).host() or source[:40]
    return Path(source).name


def _check(source: str) -> QImage | None:
    """Worker thread: validate the source as the engine will; a thumbnail for a file.

    Raises InputError (a clear, user-facing message) when it cannot be a reference."""
    prepare_reference(source)
    if is_url(source):
        return None  # not fetched here: the provider downloads it
    reader = QImageReader(source)
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid() and (size.width() > THUMB or size.height() > THUMB):
        reader.setScaledSize(size.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    # Qt may lack a plugin for a format Pillow reads (TIFF, WebP): a placeholder then.
    return None if image.isNull() else image


def _save_png(image: QImage, path: Path) -> None:
    """Worker thread: write a pasted/dropped picture as a PNG file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The format follows the ".png" suffix (PySide6 6.11 rejects an explicit format).
    if path.suffix.lower() != ".png" or not image.save(str(path)):
        raise OSError(f"cannot write the pasted image to {path}")


def _placeholder(text: str) -> QIcon:
    pixmap = QPixmap(THUMB, THUMB)
    pixmap.fill(QColor("#8a8f98"))
    painter = QPainter(pixmap)
    painter.setPen(QColor("white"))
    painter.drawText(pixmap.rect(), Qt.AlignmentFlag.AlignCenter, text)
    painter.end()
    return QIcon(pixmap)


class _Strip(QListWidget):
    """The thumbnails. Drops from outside go to the tray; drops from itself reorder."""

    def __init__(self, tray: ReferenceTray) -> None:
        super().__init__(tray)
        self._tray = tray
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        # Static: items never float freely; setMovement resets the drag flags, so
        # those come after it.
        self.setMovement(QListView.Movement.Static)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setGridSize(QSize(THUMB + 10, THUMB + 10))
        self.setSpacing(2)
        self.setUniformItemSizes(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setDragEnabled(True)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragDrop)
        self.setDefaultDropAction(Qt.DropAction.CopyAction)
        self.setFixedHeight(THUMB + 34)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.setAccessibleName("Reference images")

    # -- drags out of the strip carry the sources as URLs (for other applications);
    # -- only ever as a copy, so the view never deletes the dragged items itself.

    def mimeData(self, items: Sequence[QListWidgetItem]) -> QMimeData:
        mime = super().mimeData(items)
        urls = []
        for item in items:
            source = str(item.data(SourceRole))
            urls.append(QUrl(source) if is_url(source) else QUrl.fromLocalFile(source))
        mime.setUrls(urls)
        return mime

    def startDrag(self, supportedActions: Qt.DropAction) -> None:
        super().startDrag(Qt.DropAction.CopyAction)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        self._accept_drag(event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        self._accept_drag(event)

    def _accept_drag(self, event: QDragMoveEvent) -> None:
        if event.source() is self or self._tray.can_take(event.mimeData()):
            event.setDropAction(Qt.DropAction.CopyAction)
            event.accept()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        if event.source() is self:
            target = self.indexAt(event.position().toPoint())
            row = target.row() if target.isValid() else self.count() - 1
            current = self.currentRow()
            if current >= 0:
                self._tray.move_item(current, row)
        else:
            self._tray.add_mime(event.mimeData())
        event.setDropAction(Qt.DropAction.CopyAction)
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            self._tray.remove_selected()
        elif event.matches(QKeySequence.StandardKey.Paste):
            self._tray.paste()
        elif ctrl and event.key() == Qt.Key.Key_Left:
            self._tray.move_current(-1)
        elif ctrl and event.key() == Qt.Key.Key_Right:
            self._tray.move_current(+1)
        else:
            super().keyPressEvent(event)
            return
        event.accept()


class ReferenceTray(QWidget):
    """Reference images for the next job, in order; at most ``max`` of them."""

    changed = Signal()
    #: a candidate was refused; the user-facing reason (also shown inline)
    refused = Signal(str)

    def __init__(
        self, controller: Controller, parent: QWidget | None = None, *,
        max_refs: int = DEFAULT_MAX,
    ) -> None:
        super().__init__(parent)
        self._controller = controller
        self._max = max_refs
        self._pending: set[str] = set()  # normalized sources being checked
        self._generation = 0  # clear() makes the checks still running obsolete
        self._dialog: QFileDialog | None = None

        self.setAcceptDrops(True)
        self.title = QLabel("References")
        self.count_label = QLabel()
        self.count_label.setToolTip("Reference images in the tray / the most this model takes")
        self.add_button = self._button("Add…", "Add reference images from files", self.browse)
        self.left_button = self._button("◀", "Move the selected image left (Ctrl+Left)",
                                        lambda: self.move_current(-1))
        self.right_button = self._button("▶", "Move the selected image right (Ctrl+Right)",
                                         lambda: self.move_current(+1))
        self.remove_button = self._button("×", "Remove the selected images (Del)",
                                          self.remove_selected)
        self.strip = _Strip(self)
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()

        header = QHBoxLayout()
        header.setContentsMargins(0, 0, 0, 0)
        header.setSpacing(6)
        header.addWidget(self.title)
        header.addWidget(self.count_label)
        header.addStretch(1)
        for b in (self.add_button, self.left_button, self.right_button, self.remove_button):
            header.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(self.strip)
        layout.addWidget(self.notice)
        self.setToolTip("Drop image files or image URLs here, or paste with Ctrl+V")

        self.strip.customContextMenuRequested.connect(self._context_menu)
        self.strip.itemSelectionChanged.connect(self._update_buttons)
        self._update_count()
        self._update_buttons()

    def _button(self, text: str, tip: str, slot: Callable[[], object]) -> QToolButton:
        button = QToolButton(self)
        button.setText(text)
        button.setToolTip(tip)
        button.setAccessibleName(tip)
        button.clicked.connect(slot)
        return button

    # ------------------------------------------------------------------ public API

    def sources(self) -> list[str]:
        """The references in order: absolute file paths and http(s) URLs."""
        return [str(self.strip.item(i).data(SourceRole)) for i in range(self.strip.count())]

    def max_refs(self) -> int:
        return self._max

    def set_max(self, n: int) -> None:
        """The selected model's limit. Images beyond it are kept (the user chooses what
        to remove) and the count turns red; the composer refuses to queue them."""
        self._max = max(0, n)
        self._update_count()
        self._update_buttons()

    def pending(self) -> int:
        """How many candidates are still being checked."""
        return len(self._pending)

    def add(self, source: str) -> asyncio.Task[bool]:
        """Check ``source`` off the GUI thread, then add it; the task's result says
        whether anything was added (refusals are shown, never raised)."""
        return self.add_sources([source])

    def add_sources(self, sources: Sequence[str]) -> asyncio.Task[bool]:
        return self._controller.spawn(
            self._add(list(sources), self._generation), what="adding reference images"
        )

    def clear(self) -> None:
        self._generation += 1
        self._pending.clear()
        had = self.strip.count() > 0
        self.strip.clear()
        self._set_notice("")
        self._update_count()
        self._update_buttons()
        if had:
            self.changed.emit()

    def remove_selected(self) -> None:
        rows = sorted((self.strip.row(i) for i in self.strip.selectedItems()), reverse=True)
        if not rows and self.strip.currentRow() >= 0:
            rows = [self.strip.currentRow()]
        self.remove_rows(rows)

    def remove_rows(self, rows: Sequence[int]) -> None:
        removed = False
        for row in sorted(set(rows), reverse=True):
            if 0 <= row < self.strip.count():
                self.strip.takeItem(row)
                removed = True
        if removed:
            self._set_notice("")
            self._after_change()

    def move_item(self, row: int, to: int) -> None:
        """Move the image at ``row`` to position ``to`` (clamped)."""
        count = self.strip.count()
        if not 0 <= row < count:
            return
        to = min(max(to, 0), count - 1)
        if to == row:
            return
        item = self.strip.takeItem(row)
        self.strip.insertItem(to, item)
        self.strip.setCurrentItem(item)
        self._after_change()

    def move_current(self, step: int) -> None:
        row = self.strip.currentRow()
        if row >= 0:
            self.move_item(row, row + step)

    def paste(self) -> None:
        """Add what the clipboard holds: an image (saved as a PNG file), file URLs, or a
        URL / file path as text."""
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None or not self.can_take(mime):
            self._refuse("The clipboard holds no image, image file or image URL.")
            return
        self.add_mime(mime)

    def browse(self) -> None:
        """Pick image files (a non-modal file dialog)."""
        if self._dialog is None:
            dialog = QFileDialog(self, "Add reference images")
            dialog.setFileMode(QFileDialog.FileMode.ExistingFiles)
            dialog.setNameFilter(_IMAGE_FILTER)
            dialog.filesSelected.connect(self.add_sources)
            self._dialog = dialog
        self._dialog.open()

    # ------------------------------------------------------------------ drops and paste

    @staticmethod
    def can_take(mime: QMimeData) -> bool:
        return mime.hasUrls() or mime.hasImage() or bool(mime.text().strip())

    def add_mime(self, mime: QMimeData) -> None:
        """Sources from a drop or the clipboard: URLs first (a browser sends the
        picture's URL and its pixels: the URL is enough), then image data, then text."""
        if mime.hasUrls():
            sources = [
                u.toLocalFile() if u.isLocalFile() else u.toString() for u in mime.urls()
            ]
            self.add_sources([s for s in sources if s])
            return
        if mime.hasImage():
            data = mime.imageData()
            image = data.toImage() if isinstance(data, QPixmap) else QImage(data)
            if image.isNull():
                self._refuse("The dropped or pasted picture could not be read.")
                return
            self._controller.spawn(self._add_image(image), what="adding the pasted image")
            return
        lines = [ln.strip() for ln in mime.text().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if lines and all(is_url(ln) or os.path.isabs(os.path.expanduser(ln)) for ln in lines):
            self.add_sources(lines)
        else:
            self._refuse("The text is not an image URL or an image file's path.")

    async def _add_image(self, image: QImage) -> bool:
        if not self._room_for(1):
            return False
        path = self._controller.scratch_file(".png")
        await asyncio.to_thread(_save_png, image.copy(), path)
        return await self._add([str(path)], self._generation)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        self._accept_drag(event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        self._accept_drag(event)

    def _accept_drag(self, event: QDragMoveEvent) -> None:
        if self.can_take(event.mimeData()):
            event.setDropAction(Qt.DropAction.CopyAction)
            event.accept()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        self.add_mime(event.mimeData())
        event.setDropAction(Qt.DropAction.CopyAction)
        event.accept()

    # ------------------------------------------------------------------ checking

    def _room_for(self, n: int) -> bool:
        held = self.strip.count() + len(self._pending)
        if self._max <= 0:
            self._refuse("This model takes no reference images.", level="warning")
            return False
        if held + n > self._max:
            more = f"{n} more image" + ("s" if n != 1 else "")
            self._refuse(
                f"Too many reference images: the tray holds {held}/{self._max} and this "
                f"model takes at most {self._max}; {more} would not fit.",
                level="warning",
            )
            return False
        return True

    async def _add(self, sources: list[str], generation: int) -> bool:
        held = {normalize(s) for s in self.sources()} | self._pending
        candidates: list[str] = []
        duplicates: list[str] = []
        for raw in sources:
            if not raw.strip():
                continue
            source = normalize(raw)
            if source in held:
                duplicates.append(source)
                continue
            held.add(source)
            candidates.append(source)
        if not candidates:
            if duplicates:
                self._set_notice(
                    "Already in the tray: " + ", ".join(_label(d) for d in duplicates)
                )
            return False
        if not self._room_for(len(candidates)):
            return False

        self._pending.update(candidates)
        self._update_count()
        try:
            results = await asyncio.gather(
                *(asyncio.to_thread(_check, c) for c in candidates), return_exceptions=True
            )
        finally:
            if generation == self._generation:
                self._pending.difference_update(candidates)
        if generation != self._generation or not shiboken6.isValid(self):
            return False  # cleared (or closed) meanwhile

        errors: list[str] = []
        accepted: list[tuple[str, QImage | None]] = []
        for source, result in zip(candidates, results, strict=True):
            if isinstance(result, InputError | OSError):
                errors.append(str(result))
            elif isinstance(result, BaseException):
                raise result
            else:
                accepted.append((source, result))
        if accepted and self.strip.count() + len(accepted) > self._max:
            # The limit changed while they were being checked.
            self._update_count()
            self._room_for(len(accepted))
            return False
        for source, thumb in accepted:
            self._append(source, thumb)
        if errors:
            self._refuse("\n".join(errors))
        else:
            self._set_notice(
                "Already in the tray: " + ", ".join(_label(d) for d in duplicates)
                if duplicates else ""
            )
        self._update_count()
        if accepted:
            self._after_change()
        return bool(accepted)

    def _append(self, source: str, thumb: QImage | None) -> None:
        if thumb is not None:
            icon = QIcon(QPixmap.fromImage(thumb))
        else:
            icon = _placeholder("URL" if is_url(source) else "?")
        item = QListWidgetItem(icon, "")
        item.setData(SourceRole, source)
        item.setToolTip(source)
        item.setData(Qt.ItemDataRole.AccessibleTextRole, _label(source))
        item.setFlags(
            Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsDragEnabled
        )
        self.strip.addItem(item)

    # ------------------------------------------------------------------ display

    def _after_change(self) -> None:
        self._update_count()
        self._update_buttons()
        self.changed.emit()

    def _update_count(self) -> None:
        n = self.strip.count()
        checking = f" (+{len(self._pending)} checking…)" if self._pending else ""
        self.count_label.setText(f"{n} / {self._max}{checking}")
        self.count_label.setStyleSheet(_ERROR_STYLE if n > self._max else "")

    def _update_buttons(self) -> None:
        has = self.strip.currentRow() >= 0 or bool(self.strip.selectedItems())
        self.remove_button.setEnabled(has)
        self.left_button.setEnabled(has and self.strip.count() > 1)
        self.right_button.setEnabled(has and self.strip.count() > 1)
        self.add_button.setEnabled(self._max > 0)

    def notice_text(self) -> str:
        return self.notice.text()

    def _set_notice(self, text: str, *, error: bool = False) -> None:
        self.notice.setText(text)
        self.notice.setStyleSheet(_ERROR_STYLE if error else _NOTE_STYLE)
        self.notice.setVisible(bool(text))

    def _refuse(self, text: str, *, level: str = "error") -> None:
        self._set_notice(text, error=True)
        if level == "error":
            self._controller.error(text)
        else:
            self._controller.message.emit(level, text)
        self.refused.emit(text)

    def _context_menu(self, pos: QPoint) -> None:
        item = self.strip.itemAt(pos)
        if item is not None and not item.isSelected():
            self.strip.setCurrentItem(item)
        row = self.strip.currentRow()
        menu = QMenu(self)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        remove = menu.addAction("Remove\tDel", self.remove_selected)
        left = menu.addAction("Move left\tCtrl+Left", lambda: self.move_current(-1))
        right = menu.addAction("Move right\tCtrl+Right", lambda: self.move_current(+1))
        remove.setEnabled(item is not None)
        left.setEnabled(item is not None and row > 0)
        right.setEnabled(item is not None and 0 <= row < self.strip.count() - 1)
        menu.addSeparator()
        menu.addAction("Paste\tCtrl+V", self.paste)
        menu.addAction("Add files…", self.browse)
        clear = menu.addAction("Remove all", self.clear)
        clear.setEnabled(self.strip.count() > 0)
        menu.popup(self.strip.viewport().mapToGlobal(pos))
