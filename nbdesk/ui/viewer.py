"""The image viewer: a zoomable canvas, keyboard navigation through a list of items, and
a details pane with everything the library knows about the image.

Full images are decoded in a worker thread (``asyncio.to_thread`` + ``QImageReader``),
with reduced copies for zoomed-out drawing made there too, so a 4K image neither stalls
the GUI thread while it loads nor on every repaint; the thumbnail (if the grid already has
it) stands in meanwhile. Every core call goes through the Controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QMimeData, QPoint, QRectF, QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QDesktopServices,
    QDrag,
    QGuiApplication,
    QImage,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPixmap,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGraphicsItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSplitter,
    QStyleOptionGraphicsItem,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from nbdesk.core.library import Item
from nbdesk.ui.controller import Controller
from nbdesk.ui.library_view import human_size, ids_mime
from nbdesk.ui.thumbnails import ThumbnailCache, decode_image

MIN_ZOOM = 1 / 64
MAX_ZOOM = 32.0
ZOOM_STEP = 1.25
#: reduced copies are made down to this long side (drawn when zoomed out)
PYRAMID_FLOOR = 1024
REF_THUMB = 48


def decode_for_display(path: Path) -> list[QImage]:
    """The full image plus halved copies (a pyramid), all in a drawing-friendly format.

    Worker thread only. An empty list when the file cannot be read.
    """
    image = decode_image(path)
    if image.isNull():
        return []
    fmt = (QImage.Format.Format_ARGB32_Premultiplied if image.hasAlphaChannel()
           else QImage.Format.Format_RGB32)
    image = image.convertToFormat(fmt)
    levels = [image]
    while max(levels[-1].width(), levels[-1].height()) > PYRAMID_FLOOR:
        prev = levels[-1]
        levels.append(prev.scaled(max(1, prev.width() // 2), max(1, prev.height() // 2),
                                  Qt.AspectRatioMode.IgnoreAspectRatio,
                                  Qt.TransformationMode.SmoothTransformation))
    return levels


def params_text(params: dict[str, Any]) -> str:
    names = {"aspect_ratio": "aspect", "resolution": "resolution",
             "output_format": "format", "google_search": "Google search",
             "image_search": "image search", "cache_key": "cache key"}
    parts = []
    for key, value in params.items():
        if key == "v" or value in (None, False, ""):
            continue
        label = names.get(key, key.replace("_", " "))
        parts.append(label if value is True else f"{label} {value}")
    return " · ".join(parts) or "—"


class _ImageItem(QGraphicsItem):
    """Draws a QImage (no QPixmap conversion on the GUI thread), choosing the reduced copy
    that matches the zoom so zoomed-out repaints do not rescale 16 megapixels."""

    def __init__(self, levels: Sequence[QImage], size: QSize | None = None) -> None:
        super().__init__()
        self.levels = list(levels)
        #: the size it stands for: a thumbnail preview is drawn at the full image's size
        self.size = size if size is not None and size.isValid() else self.levels[0].size()
        self.setCacheMode(QGraphicsItem.CacheMode.NoCache)

    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, self.size.width(), self.size.height())

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        lod = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        level = 0
        while level + 1 < len(self.levels) and lod <= 0.5 ** (level + 1):
            level += 1
        image = self.levels[level]
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, lod < 2.0)
        painter.drawImage(self.boundingRect(), image,
                          QRectF(0, 0, image.width(), image.height()))


class ImageCanvas(QGraphicsView):
    """Fit / 100 % / zoom around a point / pan; drags out the file when nothing to pan."""

    zoomChanged = Signal(float)
    dragOutRequested = Signal()
    doubleClicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setBackgroundBrush(self.palette().dark())
        self._item: _ImageItem | None = None
        self._preview = False
        self._fit_mode = True
        self._press: QPoint | None = None
        self._panning = False
        self.message = QLabel(self.viewport())
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.message.setStyleSheet(
            "QLabel { background: rgba(0,0,0,140); color: white; padding: 6px 12px;"
            " border-radius: 6px; }")
        self.message.hide()

    # ------------------------------------------------------------------ content

    def set_levels(
        self, levels: Sequence[QImage], *, preview: bool = False, size: QSize | None = None
    ) -> None:
        """Show an image (and its reduced copies); a preview is a stand-in thumbnail
        stretched to ``size``, the size of the image it stands for."""
        self.scene().clear()
        self._item = _ImageItem(levels, size)
        self._preview = preview
        self.scene().addItem(self._item)
        self.scene().setSceneRect(self._item.boundingRect())
        self.fit()

    def clear(self) -> None:
        self.scene().clear()
        self._item = None
        self._preview = False
        self.scene().setSceneRect(QRectF())

    def has_image(self) -> bool:
        return self._item is not None and not self._preview

    def image_size(self) -> QSize:
        return QSize() if self._item is None else QSize(self._item.size)

    def set_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
        self._place_message()

    def _place_message(self) -> None:
        self.message.adjustSize()
        rect = self.message.rect()
        rect.moveCenter(self.viewport().rect().center())
        self.message.move(rect.topLeft())

    # ------------------------------------------------------------------ zoom

    def zoom(self) -> float:
        return float(self.transform().m11())

    def is_fit(self) -> bool:
        return self._fit_mode

    def fit_zoom(self) -> float:
        """The zoom that shows the whole image (never above 100 %)."""
        if self._item is None:
            return 1.0
        size = self._item.boundingRect().size()
        vp = self.viewport().size()
        if size.width() <= 0 or size.height() <= 0:
            return 1.0
        return min(1.0, vp.width() / size.width(), vp.height() / size.height())

    def fit(self) -> None:
        self._fit_mode = True
        self._apply(self.fit_zoom())
        if self._item is not None:
            self.centerOn(self._item.boundingRect().center())

    def actual_size(self) -> None:
        self.zoom_to(1.0)

    def zoom_in(self) -> None:
        self.zoom_by(ZOOM_STEP)

    def zoom_out(self) -> None:
        self.zoom_by(1 / ZOOM_STEP)

    def zoom_to(self, zoom: float, anchor: QPoint | None = None) -> None:
        self.zoom_by(zoom / self.zoom(), anchor)

    def zoom_by(self, factor: float, anchor: QPoint | None = None) -> None:
        """Zoom keeping the scene point under ``anchor`` (default: the centre) in place."""
        if self._item is None:
            return
        new = min(MAX_ZOOM, max(MIN_ZOOM, self.zoom() * factor))
        self._fit_mode = False
        if anchor is None:
            anchor = self.viewport().rect().center()
        before = self.mapToScene(anchor)
        self._apply(new)
        delta = self.mapFromScene(before) - anchor
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + delta.x())
        self.verticalScrollBar().setValue(self.verticalScrollBar().value() + delta.y())

    def _apply(self, zoom: float) -> None:
        old = self.zoom()
        self.setTransform(QTransform.fromScale(zoom, zoom))
        if abs(old - zoom) > 1e-9:
            self.zoomChanged.emit(zoom)

    def can_pan(self) -> bool:
        return self.horizontalScrollBar().maximum() > 0 or self.verticalScrollBar().maximum() > 0

    # ------------------------------------------------------------------ input

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120
        if not steps or self._item is None:
            super().wheelEvent(event)
            return
        self.zoom_by(ZOOM_STEP ** steps, event.position().toPoint())
        event.accept()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._fit_mode:
            self.fit()
        self._place_message()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self._item is not None:
            self._press = event.position().toPoint()
            drag_out = bool(event.modifiers() & (Qt.KeyboardModifier.ControlModifier
                                                 | Qt.KeyboardModifier.AltModifier))
            self._panning = self.can_pan() and not drag_out
            if self._panning:
                self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._press is None:
            super().mouseMoveEvent(event)
            return
        pos = event.position().toPoint()
        delta = pos - self._press
        if self._panning:
            self._press = pos
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - delta.x())
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - delta.y())
        elif delta.manhattanLength() >= QApplication.startDragDistance():
            self._press = None
            self.dragOutRequested.emit()
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._press is not None or self._panning:
            self._press = None
            self._panning = False
            self.viewport().unsetCursor()
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self._item is None:
            return
        if self._fit_mode:
            self.zoom_to(1.0, event.position().toPoint())
        else:
            self.fit()
        self.doubleClicked.emit()
        event.accept()


def _selectable(label: QLabel) -> QLabel:
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                  | Qt.TextInteractionFlag.TextSelectableByKeyboard)
    label.setWordWrap(True)
    return label


class ImageViewer(QWidget):
    """One image at a time from a list of item ids; actions go to the controller."""

    currentChanged = Signal(int)  # the item now shown (its full image may still be loading)
    imageLoaded = Signal(int)  # the item's full image is on the canvas
    saved = Signal(str)  # a "Save as" copy was written

    def __init__(
        self,
        controller: Controller,
        thumbnails: ThumbnailCache | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.thumbnails = thumbnails
        self._ids: list[int] = []
        self._current: int | None = None
        self._item: Item | None = None
        self._levels: list[QImage] = []
        self._gen = 0
        self._loading = False

        self.canvas = ImageCanvas()
        self.canvas.dragOutRequested.connect(self.drag_out)
        self.canvas.zoomChanged.connect(self._zoom_changed)
        self.toolbar = QToolBar()
        self.toolbar.setIconSize(QSize(16, 16))
        self.position_label = QLabel("")
        self.zoom_label = QLabel("")

        # --- details pane
        self.prompt_label = _selectable(QLabel())
        self.provider_label = _selectable(QLabel())
        self.model_label = _selectable(QLabel())
        self.params_label = _selectable(QLabel())
        self.cost_label = _selectable(QLabel())
        self.size_label = _selectable(QLabel())  # dimensions
        self.file_label = _selectable(QLabel())  # file size and format
        self.date_label = _selectable(QLabel())
        self.remote_label = _selectable(QLabel())
        self.parent_label = QLabel()
        self.parent_label.setTextFormat(Qt.TextFormat.RichText)
        self.parent_label.linkActivated.connect(self._open_link)
        self.parent_label.setWordWrap(True)
        self.parent_label.setToolTip("The images this one was edited from (Edit continues "
                                     "from an image), oldest first, and the edits of it")
        self.context_label = _selectable(QLabel())
        self.context_label.setWordWrap(True)
        self.answer_label = _selectable(QLabel())
        self.answer_label.setWordWrap(True)
        self.path_label = _selectable(QLabel())
        self.refs_box = QWidget()
        self.refs_layout = QVBoxLayout(self.refs_box)
        self.refs_layout.setContentsMargins(0, 0, 0, 0)
        self.refs_layout.setSpacing(4)
        details = QWidget()
        form = self._form = QFormLayout(details)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        for label, widget in (
            ("Prompt", self.prompt_label), ("Provider", self.provider_label),
            ("Model", self.model_label), ("Parameters", self.params_label),
            ("Dimensions", self.size_label), ("File", self.file_label),
            ("Cost", self.cost_label), ("Date", self.date_label),
            ("References", self.refs_box), ("Remote id", self.remote_label),
            ("Edit chain", self.parent_label), ("Context", self.context_label),
            ("Model's text", self.answer_label), ("Path", self.path_label),
        ):
            form.addRow(label, widget)
        self.details = QScrollArea()
        self.details.setWidget(details)
        self.details.setWidgetResizable(True)
        self.details.setMinimumWidth(220)

        # --- actions (shortcuts work while the focus is inside the viewer)
        a = self._action
        self.prev_action = a("Previous", self.previous, "Left", "PgUp")
        self.next_action = a("Next", self.next, "Right", "PgDown")
        self.fit_action = a("Fit", self.canvas.fit, "F")
        self.actual_action = a("100%", self.canvas.actual_size, "1", "Ctrl+0")
        self.zoom_out_action = a("Zoom out", self.canvas.zoom_out, "-", "Ctrl+-")
        self.zoom_in_action = a("Zoom in", self.canvas.zoom_in, "+", "=", "Ctrl++", "Ctrl+=")
        self.toolbar.addSeparator()
        self.favourite_action = a("☆ Favourite", self.toggle_favourite, "Ctrl+D")
        self.favourite_action.setCheckable(True)
        self.copy_image_action = a("Copy image", self.copy_image,
                                   QKeySequence.StandardKey.Copy)
        self.copy_prompt_action = a("Copy prompt", self.copy_prompt, "Ctrl+Shift+C")
        self.save_action = a("Save as…", self.save_as, QKeySequence.StandardKey.Save)
        self.reveal_action = a("Reveal", self.reveal)
        self.reveal_action.setToolTip("Show the file in the file manager")
        self.toolbar.addSeparator()
        self.reference_action = a("Use as reference", self.use_as_reference, "Ctrl+R")
        self.rerun_action = a("Re-run", self.rerun, "Ctrl+Shift+R")
        self.edit_action = a("Edit", self.edit, "Ctrl+E")
        self.delete_action = a("Delete", self.delete, QKeySequence.StandardKey.Delete)
        self._item_actions = [
            self.favourite_action, self.copy_image_action, self.copy_prompt_action,
            self.save_action, self.reveal_action, self.reference_action, self.rerun_action,
            self.edit_action, self.delete_action,
        ]

        status = QHBoxLayout()
        status.setContentsMargins(4, 0, 4, 0)
        status.addWidget(self.position_label)
        status.addStretch(1)
        status.addWidget(self.zoom_label)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.canvas, 1)
        left_layout.addLayout(status)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.details)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.splitter, 1)

        controller.libraryChanged.connect(self._library_changed)
        self._show_nothing()

    def _action(self, text: str, slot: Callable[[], object],
                *keys: str | QKeySequence.StandardKey) -> QAction:
        action = QAction(text, self)
        if keys:
            action.setShortcuts([QKeySequence(k) for k in keys])
            action.setToolTip(f"{text} ({QKeySequence(keys[0]).toString()})")
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)
        self.toolbar.addAction(action)
        return action

    # ------------------------------------------------------------------ reading

    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def current_id(self) -> int | None:
        return self._current

    @property
    def current_item(self) -> Item | None:
        return self._item

    def image(self) -> QImage | None:
        """The decoded full image, once loaded."""
        return self._levels[0] if self._levels else None

    def is_loading(self) -> bool:
        return self._loading

    # ------------------------------------------------------------------ navigation

    def set_items(self, ids: Sequence[int], current: int) -> None:
        """Browse ``ids`` (Left/Right), starting at ``current``."""
        self._ids = list(ids)
        if current not in self._ids:
            self._ids.insert(0, current)
        self.show_item(current)

    def next(self) -> None:
        self._step(1)

    def previous(self) -> None:
        self._step(-1)

    def _step(self, delta: int) -> None:
        if self._current is None or self._current not in self._ids:
            return
        row = self._ids.index(self._current) + delta
        if 0 <= row < len(self._ids):
            self.show_item(self._ids[row])

    def show_item(self, item_id: int) -> None:
        self._gen += 1
        gen = self._gen
        self._current = item_id
        self._item = None
        self._levels = []
        self._loading = True
        self.canvas.clear()
        self.canvas.set_message("Loading…")
        self._fill_details(None)
        self._update_actions()
        self.currentChanged.emit(item_id)
        self.controller.spawn(self._load(gen, item_id), what="opening the image")

    async def _load(self, gen: int, item_id: int, *, item: Item | None = None) -> None:
        try:
            if item is None:
                try:
                    item = await self.controller.item(item_id)
                except KeyError:
                    if self._current_gen(gen):
                        self.canvas.set_message("This image is no longer in the library")
                    return
                if not self._current_gen(gen):
                    return
                self._item = item
                self._fill_details(item)
                self._update_actions()
                self._show_preview(item)
            if item.deleted_at is not None:
                self.canvas.clear()
                self.canvas.set_message("This image is in the trash")
                return
            levels = await asyncio.to_thread(decode_for_display, item.path)
            if not self._current_gen(gen):
                return
            if not levels:
                self.canvas.clear()
                self.canvas.set_message(f"Cannot read {item.path.name}")
                return
            self._levels = levels
            self.canvas.set_levels(levels)
            self.canvas.set_message("")
            self._update_actions()
            self.imageLoaded.emit(item_id)
        finally:
            if self._current_gen(gen):
                self._loading = False

    def _show_preview(self, item: Item) -> None:
        """The grid's thumbnail, stretched to the image's size, while the image decodes."""
        thumbs = self.thumbnails
        if thumbs is None or thumbs.is_broken(item.id) or item.deleted_at is not None:
            return
        preview = thumbs.peek(item.id)
        if preview is not None:
            self.canvas.set_levels([preview], preview=True,
                                   size=QSize(item.width, item.height))

    def _current_gen(self, gen: int) -> bool:
        return shiboken6.isValid(self) and gen == self._gen

    def _show_nothing(self) -> None:
        self._gen += 1
        self._current = None
        self._item = None
        self._levels = []
        self._loading = False
        self.canvas.clear()
        self.canvas.set_message("No image")
        self._fill_details(None)
        self._update_actions()

    def _library_changed(self) -> None:
        """Favourite, trash or restore of the image shown: refresh what depends on it."""
        if self._current is None:
            return
        gen, item_id = self._gen, self._current

        async def refresh() -> None:
            try:
                item = await self.controller.item(item_id)
            except KeyError:
                return
            if not self._current_gen(gen) or self._loading:
                return
            had_image = bool(self._levels)
            self._item = item
            self._fill_details(item)
            self._update_actions()
            if item.deleted_at is not None and had_image:
                return  # keep showing what is on screen; the details say "in the trash"
            if not had_image or item.deleted_at is not None:
                self._loading = True
                await self._load(gen, item_id, item=item)

        self.controller.spawn(refresh(), what="refreshing the image details")

    # ------------------------------------------------------------------ details

    def _fill_details(self, item: Item | None) -> None:
        labels = (self.prompt_label, self.provider_label, self.model_label, self.params_label,
                  self.cost_label, self.size_label, self.file_label, self.date_label,
                  self.remote_label, self.parent_label, self.path_label, self.context_label,
                  self.answer_label)
        while self.refs_layout.count():
            taken = self.refs_layout.takeAt(0)
            old = taken.widget() if taken is not None else None
            if old is not None:
                old.deleteLater()
        if item is None:
            for label in labels:
                label.setText("")
            self.position_label.setText("")
            self.favourite_action.setChecked(False)
            return
        self.prompt_label.setText(item.prompt)
        self.provider_label.setText(f"{item.provider} (demo)" if item.demo else item.provider)
        self.model_label.setText(item.model)
        self.params_label.setText(params_text(item.params))
        self.cost_label.setText("—" if item.cost is None else f"${item.cost:.3f}")
        self.size_label.setText(f"{item.width} × {item.height}")
        self.file_label.setText(f"{human_size(item.size)} · {item.format.upper()}")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.completed_at))
        self.date_label.setText(when + ("  (in the trash)" if item.deleted_at else ""))
        _set_long(self.remote_label, item.remote_id or "—")
        self.parent_label.setText(
            f'<a href="item:{item.parent_item}">#{item.parent_item}</a> → this'
            if item.parent_item is not None else "—")
        gen, item_id = self._gen, item.id
        self.controller.then(self.controller.edit_chain(item_id), self.parent_label,
                             lambda chain: self._show_chain(gen, item_id, *chain),
                             what="reading the edit chain")
        n = len(item.signatures)
        self.context_label.setText(
            f"{n} thought signature{'s' if n != 1 else ''} kept: an Edit sends "
            f"{'them' if n != 1 else 'it'} back with the conversation" if n else "—")
        self.answer_label.setText(item.answer_text or "—")
        # Rows only Gemini answers fill: shown where there is something to show.
        self._form.setRowVisible(self.context_label, bool(n))
        self._form.setRowVisible(self.answer_label, bool(item.answer_text))
        _set_long(self.path_label, str(item.path))
        self.favourite_action.setChecked(item.favourite)
        self.favourite_action.setText("★ Favourite" if item.favourite else "☆ Favourite")
        if self._current in self._ids:
            self.position_label.setText(
                f"{self._ids.index(self._current) + 1} of {len(self._ids)}")
        if not item.refs:
            self.refs_layout.addWidget(QLabel("—"))
        root = self.controller.library_root
        for ref in item.refs:
            row = QWidget()
            line = QHBoxLayout(row)
            line.setContentsMargins(0, 0, 0, 0)
            thumb = QLabel()
            thumb.setFixedSize(REF_THUMB, REF_THUMB)
            thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
            text = _selectable(QLabel(ref.source))
            text.setToolTip(ref.source)
            line.addWidget(thumb)
            line.addWidget(text, 1)
            self.refs_layout.addWidget(row)
            if ref.path:  # the library's copy (a URL reference's too)
                self.controller.then(
                    asyncio.to_thread(decode_image, root / ref.path, REF_THUMB), thumb,
                    functools.partial(_set_image, thumb), what="showing a reference")

    def _show_chain(self, gen: int, item_id: int, ancestors: list[int],
                    children: list[int]) -> None:
        """The whole chain of edits this image belongs to, as links."""
        if not self._current_gen(gen):
            return
        links = [f'<a href="item:{i}">#{i}</a>' for i in ancestors[:-1]]
        if len(links) > 6:
            links = ["…", *links[-6:]]
        text = " → ".join([*links, f"<b>#{item_id}</b>"]) if links else ""
        if children:
            edits = ", ".join(f'<a href="item:{i}">#{i}</a>' for i in children)
            text += (" · " if text else "") + f"edited into {edits}"
        self.parent_label.setText(text or "—")

    def _open_link(self, link: str) -> None:
        kind, _, value = link.partition(":")
        if kind == "item" and value.isdigit():
            self.show_item(int(value))

    def _zoom_changed(self, zoom: float) -> None:
        self.zoom_label.setText(f"{zoom * 100:.0f}%")

    def _update_actions(self) -> None:
        has_item = self._item is not None
        for action in self._item_actions:
            action.setEnabled(has_item)
        self.copy_image_action.setEnabled(has_item and bool(self._levels))
        row = self._ids.index(self._current) if self._current in self._ids else -1
        self.prev_action.setEnabled(row > 0)
        self.next_action.setEnabled(0 <= row < len(self._ids) - 1)

    # ------------------------------------------------------------------ actions

    def drag_mime(self) -> QMimeData | None:
        if self._item is None:
            return None
        return ids_mime([self._item.id], [self._item.path])

    def drag_out(self) -> None:
        mime = self.drag_mime()
        if mime is None:
            return
        drag = QDrag(self)
        drag.setMimeData(mime)
        if self._levels:
            small = self._levels[-1].scaled(128, 128, Qt.AspectRatioMode.KeepAspectRatio,
                                            Qt.TransformationMode.SmoothTransformation)
            drag.setPixmap(QPixmap.fromImage(small))
            drag.setHotSpot(QPoint(small.width() // 2, small.height() // 2))
        drag.exec(Qt.DropAction.CopyAction)

    def copy_image(self) -> None:
        if self._item is None:
            return
        # Let the clipboard create its own QMimeData: one made in Python and handed over
        # would be deleted by Qt after the interpreter is gone, crashing the app's exit
        # (PySide 6.11). The URL goes onto the clipboard's own object.
        clipboard = QGuiApplication.clipboard()
        if self._levels:
            clipboard.setImage(self._levels[0])
        else:
            clipboard.setText(str(self._item.path))
        data = clipboard.mimeData()
        if data is not None:
            data.setUrls([QUrl.fromLocalFile(str(self._item.path))])
        self.controller.info("Image copied")

    def copy_prompt(self) -> None:
        if self._item is not None:
            QGuiApplication.clipboard().setText(self._item.prompt)
            self.controller.info("Prompt copied")

    def save_as(self) -> QFileDialog | None:
        """Ask where to save a copy, without blocking (``open()``); the bytes are copied."""
        item = self._item
        if item is None:
            return None
        dialog = QFileDialog(self, "Save image as", str(Path.home() / item.path.name))
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        suffix = item.path.suffix.lstrip(".")
        dialog.setNameFilters([f"{item.format.upper()} image (*.{suffix})", "All files (*)"])
        dialog.setDefaultSuffix(suffix)
        dialog.fileSelected.connect(lambda path: self.save_to(Path(path), item))
        dialog.finished.connect(lambda _r: dialog.deleteLater())
        dialog.open()
        return dialog

    def save_to(self, dest: Path, item: Item | None = None) -> asyncio.Task[Path] | None:
        """Copy the original file (never re-encoded) to ``dest`` in a thread."""
        item = item or self._item
        if item is None:
            return None
        if dest.suffix.lower() != item.path.suffix.lower():
            dest = dest.with_name(dest.name + item.path.suffix)

        async def run() -> Path:
            await asyncio.to_thread(shutil.copyfile, item.path, dest)
            self.controller.info(f"Saved {dest.name}")
            if shiboken6.isValid(self):
                self.saved.emit(str(dest))
            return dest

        return self.controller.spawn(run(), what="saving the image")

    def reveal(self) -> None:
        if self._item is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._item.path.parent)))

    def use_as_reference(self) -> None:
        if self._item is not None:
            self.controller.useAsReference.emit(str(self._item.path))

    def rerun(self) -> None:
        if self._item is not None:
            self.controller.rerunRequested.emit(self._item)

    def edit(self) -> None:
        if self._item is not None:
            self.controller.editRequested.emit(self._item)

    def toggle_favourite(self) -> None:
        item = self._item
        if item is None:
            return
        self.controller.set_favourite(item.id, not item.favourite)
        # shown at once; the refresh after libraryChanged confirms it
        self._item = dataclasses.replace(item, favourite=not item.favourite)
        self.favourite_action.setChecked(self._item.favourite)
        self.favourite_action.setText("★ Favourite" if self._item.favourite else "☆ Favourite")

    def delete(self) -> None:
        """Trash the image (Ctrl+Z in the window undoes it) and show the next one."""
        if self._current is None:
            return
        item_id = self._current
        self.controller.trash([item_id])
        row = self._ids.index(item_id) if item_id in self._ids else -1
        if row >= 0:
            del self._ids[row]
        if self._ids:
            self.show_item(self._ids[min(max(row, 0), len(self._ids) - 1)])
        else:
            self._show_nothing()


__all__ = ["ImageCanvas", "ImageViewer", "decode_for_display", "params_text"]


def _set_long(label: QLabel, text: str, keep: int = 44) -> None:
    """Show a long identifier shortened in the middle; the whole of it in the tooltip."""
    shown = text if len(text) <= keep else f"{text[:keep // 2 - 1]}…{text[-(keep // 2):]}"
    label.setText(shown)
    label.setToolTip(text)


def _set_image(label: QLabel, image: QImage) -> None:
    """A decoded thumbnail into its label (a null image: none)."""
    if not image.isNull():
        label.setPixmap(QPixmap.fromImage(image))
