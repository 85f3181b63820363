"""The library grid: a list model over item ids, items fetched in pages, thumbnails on demand.

Only the ids of the matching items are loaded up front (``controller.item_ids``, cheap even
for 100,000 rows). ``Item`` records are fetched a page at a time when a row is first
painted, and thumbnails come from the shared ``ThumbnailCache``; nothing here reads a
file or the database on the GUI thread.

A reload after ``libraryChanged`` is applied as row insertions and removals when the
order of the surviving rows did not change, so the selection and the scroll position stay
where they were; a new filter resets the model. Items a job stored here (``itemsAdded``)
are inserted on top directly when the grid is unfiltered.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shiboken6
from PySide6.QtCore import (
    QItemSelection,
    QItemSelectionModel,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QSize,
    QStringListModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QFontMetrics,
    QImage,
    QPainter,
    QPalette,
    QPixmap,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QProgressBar,
    QStackedWidget,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from nbdesk.api.capabilities import PROVIDERS
from nbdesk.core.library import FirstPage, Item
from nbdesk.ui.model_rows import insert_rows, quiet_reset, remove_rows
from nbdesk.ui.thumbnails import ThumbnailCache

if TYPE_CHECKING:  # the grid is built before asyncio and the engine are imported, and
    # before the types only its actions and dialogs use (PySide makes a type, and its
    # enums, on first use: QStyle alone takes 6-12 ms)
    import asyncio

    from PySide6.QtGui import QAction, QKeySequence
    from PySide6.QtWidgets import QFileDialog

    from nbdesk.ui.controller import Controller

Index = QModelIndex | QPersistentModelIndex

PAGE_SIZE = 120  # items fetched per query as rows come into view (Library.first_page's)

ItemIdRole = Qt.ItemDataRole.UserRole
ItemRole = Qt.ItemDataRole.UserRole + 1  # the Item, or None while its page loads
FavouriteRole = Qt.ItemDataRole.UserRole + 2
PathRole = Qt.ItemDataRole.UserRole + 3

MIME_IDS = "application/x-nbdesk-item-ids"
EMPTY_TEXT = "No images yet — write a prompt and press Ctrl+Enter, or try Demo"
NO_MATCH_TEXT = "No images match the search and filters"
#: new images are inserted into the grid at most this often (s); see add_items
ADD_INTERVAL = 0.25
DATE_CHOICES: tuple[tuple[str, int | None], ...] = (
    ("Any date", None), ("Today", 0), ("Last 7 days", 7), ("Last 30 days", 30),
)


def short_prompt(prompt: str, limit: int = 60) -> str:
    text = " ".join(prompt.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def tooltip_for(item: Item) -> str:
    provider = f"{item.provider} (demo)" if item.demo else item.provider
    return (
        f"{item.prompt}\n\n{provider} · {item.model}\n"
        f"{item.width} × {item.height} · {human_size(item.size)}"
    )


def ids_mime(ids: Sequence[int], paths: Sequence[Path]) -> QMimeData:
    """File URLs (drag to the desktop or another app copies the files) plus our ids."""
    from PySide6.QtCore import QUrl

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    mime.setData(MIME_IDS, json.dumps(list(ids)).encode())
    return mime


def since_for(days: int | None, now: float | None = None) -> float | None:
    """The ``since`` filter for a date choice: 0 is local midnight today."""
    if days is None:
        return None
    now = time.time() if now is None else now
    if days == 0:
        midnight = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
        return midnight.timestamp()
    return now - days * 86400


def copy_into(src: Path, folder: Path) -> Path:
    """Copy a file into ``folder`` byte for byte, never overwriting (``name-1.ext`` …)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        name = src.name if n == 0 else f"{src.stem}-{n}{src.suffix}"
        dest = folder / name
        try:
            with open(src, "rb") as fin, open(dest, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except FileExistsError:
            n += 1
            continue
        shutil.copystat(src, dest)
        return dest


class LibraryModel(QStringListModel):
    """Rows are item ids, newest first; items and thumbnails arrive lazily.

    The rows themselves are counted by the C++ base (one empty string each; ``_ids``
    has the ids): the grid's layout makes an index for every row, and every index asks
    ``rowCount``. Answered in Python, a relayout of a 10,000-item grid (each insertion
    on top) was 20,000 calls into Python, each waiting for the GIL while jobs ran on
    other threads. Rows change only through ``_reset_ids``, ``_insert_ids`` and
    ``_remove_rows``, which keep the two in step (``_ids`` changes first: a handler of
    rowsAboutToBeInserted/Removed must not map rows to ids).
    """

    countChanged = Signal(int)
    reloaded = Signal()  # a reload was applied (rows are current)
    pageLoaded = Signal()  # a page of items arrived

    def __init__(
        self,
        controller: Controller | None,
        thumbnails: ThumbnailCache,
        parent: Any = None,
        *,
        page_size: int = PAGE_SIZE,
        icon_size: int = 160,
    ) -> None:
        super().__init__(parent)
        #: None while the window is still starting (``attach`` follows): the rows shown
        #: then come from ``preload``; anything more is asked for on attach
        self._controller = controller
        self._deferred_reload = False
        self._deferred_pages: set[int] = set()
        self.thumbnails = thumbnails
        self.page_size = page_size
        self._ids: list[int] = []
        self._rows: dict[int, int] = {}
        self._items: dict[int, Item] = {}  # fetched since the last reload
        self._stale: dict[int, Item] = {}  # from before it: shown until refreshed
        self._pages: set[int] = set()  # pages requested since the last reload
        self._gen = 0
        self._filters: dict[str, Any] = {}
        self._loading = False
        self._again = False
        self._want_reset = False
        self._prefetch_first = False
        #: about how many cells the grid shows at once (the view sets it from its size)
        self.first_screen = 24
        self._adding: list[int] = []  # ids announced by add_items, not inserted yet
        self._add_pending = False
        self._last_add = 0.0  # when add_items last inserted rows (time.monotonic)
        self.loaded_once = False
        #: how many items were fetched from the database (lazy loading is measurable)
        self.fetched = 0
        self._icon_size = icon_size
        self._dpr = 1.0
        self._pixmaps: OrderedDict[int, QPixmap] = OrderedDict()
        self._pixmap_limit = 600
        self._loading_pixmap = self._scaled(thumbnails.loading)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(lambda: self._schedule(reset=False))
        thumbnails.ready.connect(self._thumbnail_ready)

    @property
    def controller(self) -> Controller:
        if self._controller is None:
            raise RuntimeError("the library grid has no controller yet")
        return self._controller

    # ------------------------------------------------------------------ reading

    def ids(self) -> list[int]:
        return list(self._ids)

    def filters(self) -> dict[str, Any]:
        return dict(self._filters)

    def row_of(self, item_id: int) -> int | None:
        return self._rows.get(item_id)

    def index_of(self, item_id: int) -> QModelIndex:
        row = self._rows.get(item_id)
        return QModelIndex() if row is None else self.index(row, 0)

    def item(self, item_id: int) -> Item | None:
        """The item if it was fetched (possibly before the last reload), else None."""
        return self._items.get(item_id) or self._stale.get(item_id)

    def item_at(self, row: int) -> Item | None:
        return self._item_for_row(row, request=False)

    def is_loading(self) -> bool:
        return self._loading or self._timer.isActive()

    def set_icon_size(self, size: int, device_pixel_ratio: float = 1.0) -> None:
        self._icon_size = size
        self._dpr = device_pixel_ratio
        self._pixmaps.clear()
        self._loading_pixmap = self._scaled(self.thumbnails.loading)
        if self._ids:
            self._changed(0, len(self._ids) - 1, [Qt.ItemDataRole.DecorationRole])

    # ------------------------------------------------------------------ Qt model

    # ------------------------------------------------------------------ rows

    def _reset_ids(self, ids: Sequence[int]) -> None:
        with quiet_reset(self):
            self._ids = list(ids)
            self._reindex()
            remove_rows(self, 0, QStringListModel.rowCount(self))
            insert_rows(self, 0, len(self._ids))

    def _insert_ids(self, row: int, ids: Sequence[int]) -> None:
        self._ids[row:row] = ids
        self._reindex()
        insert_rows(self, row, len(ids))

    def _remove_rows(self, first: int, last: int, *, reindex: bool = True) -> None:
        """(``reindex=False``: the caller reindexes once after several removals.)"""
        del self._ids[first:last + 1]
        if reindex:
            self._reindex()
        remove_rows(self, first, last - first + 1)

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return (Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
                | Qt.ItemFlag.ItemIsDragEnabled)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._ids):
            return None
        row = index.row()
        item_id = self._ids[row]
        if role == ItemIdRole:
            return item_id
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole,
                        Qt.ItemDataRole.DecorationRole, ItemRole, FavouriteRole, PathRole):
            return None
        item = self._item_for_row(row, request=True)
        if role == ItemRole:
            return item
        if role == Qt.ItemDataRole.DisplayRole:
            return "…" if item is None else short_prompt(item.prompt)
        if item is None:
            return self._loading_pixmap if role == Qt.ItemDataRole.DecorationRole else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return tooltip_for(item)
        if role == FavouriteRole:
            return item.favourite
        if role == PathRole:
            return str(item.path)
        return self._decoration(item)

    def mimeTypes(self) -> list[str]:
        return ["text/uri-list", MIME_IDS]

    def supportedDragActions(self) -> Qt.DropAction:
        return Qt.DropAction.CopyAction

    def mimeData(self, indexes: Sequence[QModelIndex]) -> QMimeData:
        ids: list[int] = []
        for index in sorted(indexes, key=lambda i: i.row()):
            item_id = self._ids[index.row()] if 0 <= index.row() < len(self._ids) else None
            if item_id is not None and item_id not in ids:
                ids.append(item_id)
        # Items not fetched yet (select-all of a huge library) travel as ids only.
        paths = [item.path for item in (self.item(i) for i in ids) if item is not None]
        return ids_mime(ids, paths)

    # ------------------------------------------------------------------ lazy items

    def _item_for_row(self, row: int, *, request: bool) -> Item | None:
        item_id = self._ids[row]
        item = self._items.get(item_id)
        if item is not None:
            return item
        if request:
            self._request_page(row // self.page_size)
        return self._stale.get(item_id)

    def _request_page(self, page: int) -> None:
        if page in self._pages:
            return
        self._pages.add(page)
        wanted = [i for i in self._ids[page * self.page_size:(page + 1) * self.page_size]
                  if i not in self._items]
        if not wanted:
            return
        if self._controller is None:
            self._pages.discard(page)
            self._deferred_pages.add(page)  # asked for once attached
            return
        gen = self._gen
        self.controller.then(self.controller.items_by_id(wanted), self,
                             lambda items: self._fetched(gen, items),
                             what="loading the library")

    def _fetched(self, gen: int, items: dict[int, Item]) -> None:
        self.fetched += len(items)
        if gen != self._gen:
            return  # fetched before a change: the rows ask again
        rows = []
        for item_id, item in items.items():
            row = self._rows.get(item_id)
            if row is None:
                continue
            self._items[item_id] = item
            self._stale.pop(item_id, None)
            rows.append(row)
        if rows:
            self._changed(min(rows), max(rows))
        if self._prefetch_first and self._ids and self._ids[0] in self._items:
            self._prefetch_first = False
            self._request_first_screen()
        self.pageLoaded.emit()

    def _request_first_screen(self) -> None:
        """The first screen's thumbnails, queued in reverse: the loads (newest request
        first) go from the top row down; rows painted later jump ahead."""
        first = [self._items[i] for i in self._ids[:self.first_screen] if i in self._items]
        for item in reversed(first):
            self.thumbnails.get(item.id, item.path, item.sha256)

    def _decoration(self, item: Item) -> QPixmap:
        pixmap = self._pixmaps.get(item.id)
        if pixmap is not None:
            self._pixmaps.move_to_end(item.id)
            return pixmap
        image = self.thumbnails.get(item.id, item.path, item.sha256)
        if image is None:
            return self._loading_pixmap
        pixmap = self._scaled(image)
        self._pixmaps[item.id] = pixmap
        while len(self._pixmaps) > self._pixmap_limit:
            self._pixmaps.popitem(last=False)
        return pixmap

    def _scaled(self, image: QImage) -> QPixmap:
        side = max(1, round(self._icon_size * self._dpr))
        if max(image.width(), image.height()) > side:
            image = image.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio,
                                 Qt.TransformationMode.SmoothTransformation)
        pixmap = QPixmap.fromImage(image)
        pixmap.setDevicePixelRatio(self._dpr)
        return pixmap

    def _thumbnail_ready(self, item_id: int) -> None:
        self._pixmaps.pop(item_id, None)
        row = self._rows.get(item_id)
        if row is not None:
            self._changed(row, row, [Qt.ItemDataRole.DecorationRole])

    def _changed(self, first: int, last: int, roles: Sequence[int] = ()) -> None:
        self.dataChanged.emit(self.index(first, 0), self.index(last, 0), list(roles))

    # ------------------------------------------------------------------ reloading

    def set_filters(self, **filters: Any) -> None:
        """Show the items matching ``filters`` (``controller.item_ids`` keywords)."""
        clean = {k: v for k, v in filters.items() if v not in (None, "", False)}
        if clean == self._filters and self.loaded_once:
            return
        self._filters = clean
        self._timer.stop()
        self._schedule(reset=True)

    def reload(self) -> None:
        """Re-read the ids (coalesces bursts of library changes into one query)."""
        if not self._timer.isActive():
            self._timer.start()

    def add_items(self, ids: Sequence[int]) -> None:
        """Items just stored here (a job completed). They are the newest, so in the
        unfiltered grid they go on top as they are, without re-reading every id (with
        many jobs finishing, a full reload per job kept the GUI thread busy); under a
        filter, or when they do not sort first after all, the ids are re-read."""
        if not ids:
            return
        self._adding.extend(i for i in ids if i not in self._adding)
        if not self._add_pending:
            self._add_pending = True
            self.controller.spawn(self._run_add(), what="loading the new images")

    async def _run_add(self) -> None:
        try:
            import asyncio

            # Take every id announced meanwhile in one go: the next insertion comes
            # ADD_INTERVAL after the last (each one re-lays out and repaints the grid).
            await asyncio.sleep(max(0.0, self._last_add + ADD_INTERVAL - time.monotonic()))
            ids, self._adding = self._adding, []
            self._add_pending = False
            items = await self.controller.items_by_id(ids)
        except BaseException:
            self._add_pending = False
            raise
        if not shiboken6.isValid(self):
            return
        new = sorted((it for it in items.values() if it.id not in self._rows),
                     key=lambda it: (it.completed_at, it.id), reverse=True)
        if not new:
            return
        top = self.item(self._ids[0]) if self._ids else None
        if (self._filters or not self.loaded_once or self.is_loading() or self._want_reset
                or any(it.deleted_at is not None for it in new)
                or (self._ids and (top is None or (top.completed_at, top.id)
                                   > (new[-1].completed_at, new[-1].id)))):
            self.reload()
            return
        self._last_add = time.monotonic()
        for it in new:
            self._items[it.id] = it
        self._pages.clear()  # rows moved down: pages are asked for again (only missing ids)
        self._insert_ids(0, [it.id for it in new])
        self.countChanged.emit(len(self._ids))
        self.reloaded.emit()

    def _schedule(self, *, reset: bool) -> None:
        self._want_reset = self._want_reset or reset
        if self._loading:
            self._again = True
            return
        if self._controller is None:
            self._deferred_reload = True
            return
        self._loading = True
        self.controller.spawn(self._run_reload(), what="loading the library")

    def attach(self, controller: Controller) -> None:
        """The controller arrives (the window finished starting): what was asked for
        meanwhile is loaded now."""
        self._controller = controller
        pages, self._deferred_pages = self._deferred_pages, set()
        if self._deferred_reload:  # (its rows ask for their pages again)
            self._deferred_reload = False
            self._schedule(reset=False)
            return
        for page in sorted(pages):
            self._request_page(page)

    def preload(self, ids: list[int], items: dict[int, Item]) -> None:
        """The unfiltered grid's ids and first page, read before the controller exists
        (``Library.first_page``, on another thread while the window was being built)."""
        self._filters = {}
        self._apply(ids, reset=True)
        for item_id in ids[:self.page_size]:
            item = items.get(item_id)
            if item is not None:
                self._items[item_id] = item
        self._pages.add(0)
        self._request_first_screen()
        self.pageLoaded.emit()

    async def _run_reload(self) -> None:
        try:
            while True:
                self._again = False
                reset, self._want_reset = self._want_reset, False
                filters = dict(self._filters)
                ids = await self.controller.item_ids(**filters)
                if not shiboken6.isValid(self):
                    return
                if filters != self._filters:  # an answer for filters no longer shown
                    self._want_reset = True
                    continue
                first = not self.loaded_once
                self._apply(ids, reset=reset)
                if first and self._ids:
                    # Opening: ask for the first page now, not when the grid first paints
                    # (a layout later), and its thumbnails as soon as it is here.
                    self._prefetch_first = True
                    self._request_page(0)
                if not self._again:  # else the library changed meanwhile: read it again
                    return
        finally:
            if shiboken6.isValid(self):
                self._loading = False

    def _apply(self, ids: list[int], *, reset: bool) -> None:
        self._gen += 1
        self._stale.update(self._items)
        self._items = {}
        self._pages.clear()
        keep = set(ids)
        if not reset and not self._patch(ids, keep):
            reset = True
        if reset:
            self._reset_ids(ids)
        self._stale = {k: v for k, v in self._stale.items() if k in keep}
        if self._ids and not reset:
            self._changed(0, len(self._ids) - 1)  # rows refetch their (maybe changed) items
        self.loaded_once = True
        self.countChanged.emit(len(self._ids))
        self.reloaded.emit()

    def _patch(self, new: list[int], new_set: set[int]) -> bool:
        """Turn the current rows into ``new`` by removals and insertions; False if the
        surviving rows changed order (or the change is too scattered): reset instead."""
        old = self._ids
        old_set = set(old)
        if [i for i in old if i in new_set] != [i for i in new if i in old_set]:
            return False
        removed = [r for r, i in enumerate(old) if i not in new_set]
        runs: list[tuple[int, int]] = []
        for r in removed:
            if runs and runs[-1][1] == r - 1:
                runs[-1] = (runs[-1][0], r)
            else:
                runs.append((r, r))
        if len(runs) > 64:
            return False
        for first, last in reversed(runs):
            self._remove_rows(first, last, reindex=False)
        pos = j = 0
        while j < len(new):
            if pos < len(self._ids) and self._ids[pos] == new[j]:
                pos += 1
                j += 1
                continue
            k = j
            while k < len(new) and new[k] not in old_set:
                k += 1
            self._insert_ids(pos, new[j:k])
            pos += k - j
            j = k
        self._reindex()
        return True

    def _reindex(self) -> None:
        self._rows = {item_id: row for row, item_id in enumerate(self._ids)}


class _ThumbDelegate(QStyledItemDelegate):
    """Paints a cell: the thumbnail centred in a square, a star, one line of prompt."""

    def __init__(self, icon_size: int, padding: int, parent: Any = None) -> None:
        super().__init__(parent)
        self.icon_size = icon_size
        self.padding = padding
        #: the grid it paints (its selection)
        self.parent_view: QListView | None = None

    def cell_size(self) -> QSize:
        text_h = QFontMetrics(QApplication.font()).height()
        return QSize(self.icon_size + 2 * self.padding,
                     self.icon_size + text_h + 3 * self.padding)

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:
        return self.cell_size()

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        # The selection is asked of the view and drawn here, as the style's item panel
        # would draw it: ``option.state`` and ``style()`` would make PySide build the
        # QStyle type (6-12 ms) before the grid's first screen.
        view = self.parent_view
        selected = view is not None and view.selectionModel().isSelected(index)
        rect: QRect = option.rect
        palette: QPalette = option.palette
        if selected and view is not None:
            group = (QPalette.ColorGroup.Disabled if not view.isEnabled()
                     else QPalette.ColorGroup.Active if view.isActiveWindow()
                     else QPalette.ColorGroup.Inactive)
            painter.fillRect(rect, palette.brush(group, QPalette.ColorRole.Highlight))
        pad = self.padding
        square = QRect(rect.left() + pad, rect.top() + pad, self.icon_size, self.icon_size)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        pixmap = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pixmap, QPixmap) and not pixmap.isNull():
            size = pixmap.deviceIndependentSize().toSize().scaled(
                square.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(QPoint(0, 0), size)
            target.moveCenter(square.center())
            painter.drawPixmap(target, pixmap)
        if index.data(FavouriteRole):
            painter.setPen(QColor(240, 190, 40))
            painter.drawText(square.adjusted(4, 2, -4, 0),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, "★")
        painter.setPen(palette.color(
            QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text))
        text_rect = QRect(rect.left() + pad, square.bottom() + pad,
                          rect.width() - 2 * pad, rect.bottom() - square.bottom() - pad)
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        metrics = painter.fontMetrics()
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
                         metrics.elidedText(text, Qt.TextElideMode.ElideRight,
                                            text_rect.width()))
        painter.restore()


class LibraryView(QWidget):
    """Search, filters and the grid; forwards actions to the controller."""

    itemActivated = Signal(int)  # open this item (in the viewer)
    countChanged = Signal(int)  # how many images the grid shows
    exportFinished = Signal(list)  # paths written by an export
    #: once, at start: the rows in view have their items and thumbnails (or there are
    #: none). The window holds less urgent start-up work back until then.
    firstScreenReady = Signal()

    def __init__(
        self,
        controller: Controller | None,
        thumbnails: ThumbnailCache | None = None,
        parent: QWidget | None = None,
        *,
        icon_size: int = 160,
        page_size: int = PAGE_SIZE,
        preload: FirstPage | None = None,
    ) -> None:
        """``controller`` None: the window is starting; ``attach`` gives it later, and
        until then the grid shows ``preload`` (the unfiltered first page)."""
        super().__init__(parent)
        self._controller = controller
        if thumbnails is None:
            assert controller is not None, "a thumbnail cache or a controller"
            thumbnails = ThumbnailCache(controller.thumbnail_dir, parent=self)
        self.thumbnails = thumbnails
        self.model = LibraryModel(controller, thumbnails, self, page_size=page_size,
                                  icon_size=icon_size)

        # --- search and filters
        self.search = QLineEdit(placeholderText="Search prompts…")
        self.search.setClearButtonEnabled(True)
        self.provider_combo = QComboBox()
        self.provider_combo.addItem("All providers", None)
        for pid, caps in PROVIDERS.items():
            self.provider_combo.addItem(caps.label, pid)
        self.model_combo = QComboBox()
        self._fill_models()
        self.date_combo = QComboBox()
        for label, days in DATE_CHOICES:
            self.date_combo.addItem(label, days)
        self.favourites_check = QCheckBox("Favourites only")
        self.count_label = QLabel("")
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(200)
        self._debounce.timeout.connect(self.apply_filters)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        self.search.returnPressed.connect(self.apply_filters)
        self.provider_combo.currentIndexChanged.connect(self._provider_changed)
        self.model_combo.currentIndexChanged.connect(lambda _i: self.apply_filters())
        self.date_combo.currentIndexChanged.connect(lambda _i: self.apply_filters())
        self.favourites_check.toggled.connect(lambda _b: self.apply_filters())

        # --- the grid
        padding = 8
        self.delegate = _ThumbDelegate(icon_size, padding, self)
        self.list = QListView()
        # A viewport made here: the one Qt makes reaches Python as a bare QWidget*, and
        # PySide then creates every QWidget subclass's type (and enums) to find out
        # what it is (~20 ms, before the grid's first screen).
        self.list.setViewport(QWidget())
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setMovement(QListView.Movement.Static)
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setFlow(QListView.Flow.LeftToRight)
        self.list.setWrapping(True)
        self.list.setUniformItemSizes(True)
        # Every row laid out at once: with the rows counted in C++ (LibraryModel) that
        # is ~5 ms for 10,000 (~16 ms for 100,000), less in all than in batches, which
        # also repainted the grid after each batch.
        self.list.setLayoutMode(QListView.LayoutMode.SinglePass)
        self.list.setIconSize(QSize(icon_size, icon_size))
        cell = self.delegate.cell_size()
        self.list.setGridSize(QSize(cell.width() + 6, cell.height() + 6))
        self.list.setItemDelegate(self.delegate)
        self.delegate.parent_view = self.list
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list.setDragEnabled(True)
        self.list.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.list.setDefaultDropAction(Qt.DropAction.CopyAction)
        self.list.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.list.setModel(self.model)
        self.model.set_icon_size(icon_size, self.devicePixelRatioF())
        self.list.activated.connect(self._activated)

        self.empty_label = QLabel(EMPTY_TEXT)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)
        self.empty_label.setEnabled(False)  # drawn in the palette's disabled (soft) colour
        self.stack = QStackedWidget()
        self.stack.addWidget(self.list)
        self.stack.addWidget(self.empty_label)

        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.progress.hide()

        filters = QHBoxLayout()  # search on its own row: the panel can be narrow
        filters.addWidget(self.search, 1)
        filter_row = QHBoxLayout()
        filter_row.addWidget(self.provider_combo, 1)
        filter_row.addWidget(self.model_combo, 1)
        filter_row.addWidget(self.date_combo, 1)
        filter_row.addWidget(self.favourites_check)
        status = QHBoxLayout()
        status.addWidget(self.count_label)
        status.addStretch(1)
        status.addWidget(self.progress)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(filters)
        layout.addLayout(filter_row)
        layout.addWidget(self.stack, 1)
        layout.addLayout(status)

        self._restore: tuple[list[int], int | None] | None = None
        self.model.modelAboutToBeReset.connect(self._remember_position)
        self.model.modelReset.connect(self._restore_position)
        self.model.countChanged.connect(self._count_changed)
        self.list.selectionModel().selectionChanged.connect(lambda *_: self._update_actions())
        self.first_screen_shown = False
        self._grid_actions: tuple[QAction, ...] = ()  # made by attach
        for signal in (self.model.reloaded, self.model.pageLoaded, self.thumbnails.ready):
            signal.connect(self._check_first_screen)
        self._update_actions()
        if preload is not None:
            self.model.preload(preload.ids, preload.items)
        self.apply_filters()  # the same (empty) filters as the preload's: nothing to do
        if controller is not None:
            self.attach(controller)

    @property
    def controller(self) -> Controller:
        if self._controller is None:
            raise RuntimeError("the library view has no controller yet")
        return self._controller

    def attach(self, controller: Controller) -> None:
        self._controller = controller
        self._build_actions()
        controller.libraryChanged.connect(self.model.reload)
        controller.itemsAdded.connect(self.model.add_items)
        self.model.attach(controller)

    def _build_actions(self) -> None:
        """The grid's actions (its context menu and shortcuts), made with the controller
        they act through. Shortcuts only where the grid has focus (Del in the search
        field deletes text, not images)."""
        from PySide6.QtGui import QKeySequence

        self.open_action = self._action("Open", self.open_current)
        self.delete_action = self._action("Delete", self.delete_selected,
                                          QKeySequence(QKeySequence.StandardKey.Delete))
        self.export_action = self._action("Export…", self.export_selected,
                                          QKeySequence("Ctrl+Shift+E"))
        self.reference_action = self._action("Use as reference", self.use_as_reference,
                                             QKeySequence("Ctrl+R"))
        self.favourite_action = self._action("Favourite", self.toggle_favourite,
                                             QKeySequence("Ctrl+D"))
        self._grid_actions = (self.open_action, self.delete_action, self.export_action,
                              self.reference_action, self.favourite_action)
        self._update_actions()

    def _action(self, text: str, slot: Callable[[], object],
                shortcut: QKeySequence | None = None) -> QAction:
        from PySide6.QtGui import QAction

        action = QAction(text, self.list)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        action.triggered.connect(lambda _checked=False: slot())
        self.list.addAction(action)
        return action

    # ------------------------------------------------------------------ filters

    def _fill_models(self) -> None:
        provider = self.provider_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("All models", None)
        seen: set[str] = set()
        for pid, caps in PROVIDERS.items():
            if provider not in (None, pid):
                continue
            for m in caps.models:
                if m.model not in seen:
                    seen.add(m.model)
                    self.model_combo.addItem(m.label if provider else f"{m.label} ({pid})",
                                             m.model)
        self.model_combo.blockSignals(False)

    def _provider_changed(self, _index: int) -> None:
        self._fill_models()
        self.apply_filters()

    def filters(self) -> dict[str, Any]:
        """The ``controller.item_ids`` keywords for the current search and filters."""
        return {
            "text": self.search.text().strip() or None,
            "provider": self.provider_combo.currentData(),
            "model": self.model_combo.currentData(),
            "since": since_for(self.date_combo.currentData()),
            "favourites": self.favourites_check.isChecked(),
        }

    def apply_filters(self) -> None:
        self._debounce.stop()
        self.model.set_filters(**self.filters())

    # ------------------------------------------------------------------ state

    def _count_changed(self, count: int) -> None:
        self.count_label.setText("1 image" if count == 1 else f"{count:,} images")
        if count == 0:
            self.empty_label.setText(NO_MATCH_TEXT if self.model.filters() else EMPTY_TEXT)
            self.stack.setCurrentWidget(self.empty_label)
        else:
            self.stack.setCurrentWidget(self.list)
        self._update_actions()
        self.countChanged.emit(count)

    def focus_search(self) -> None:
        self.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search.selectAll()

    def visible_ids(self) -> list[int]:
        """The ids the grid shows (current search and filters), in display order."""
        return self.model.ids()

    def is_empty_state(self) -> bool:
        return self.stack.currentWidget() is self.empty_label

    def _cells_in_view(self) -> int:
        grid = self.list.gridSize()
        vp = self.list.viewport()
        if grid.width() <= 0 or grid.height() <= 0:
            return self.model.first_screen
        columns = max(1, vp.width() // grid.width())
        rows = max(1, -(-vp.height() // grid.height()))
        return columns * rows

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.model.first_screen = self._cells_in_view()

    def _check_first_screen(self, *_args: object) -> None:
        if self.first_screen_shown or not self.model.loaded_once:
            return
        count = min(self.model.rowCount(), self._cells_in_view())
        for row in range(count):
            item = self.model.item_at(row)
            if item is None or self.thumbnails.peek(item.id) is None:
                return
        self.first_screen_shown = True
        for signal in (self.model.reloaded, self.model.pageLoaded, self.thumbnails.ready):
            signal.disconnect(self._check_first_screen)
        self.firstScreenReady.emit()

    def _remember_position(self) -> None:
        top = self.list.indexAt(QPoint(self.list.gridSize().width() // 2,
                                       self.list.gridSize().height() // 2))
        anchor = self.model.data(top, ItemIdRole) if top.isValid() else None
        self._restore = (self.selected_ids(), anchor)

    def _restore_position(self) -> None:
        if self._restore is None:
            return
        selected, anchor = self._restore
        self._restore = None
        self.select_ids(selected)
        if anchor is not None:
            index = self.model.index_of(anchor)
            if index.isValid():
                self.list.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtTop)

    def _update_actions(self) -> None:
        has = bool(self.list.selectionModel().selectedIndexes())
        for action in self._grid_actions:  # (none until attach)
            action.setEnabled(has)

    def selected_ids(self) -> list[int]:
        rows = sorted(i.row() for i in self.list.selectionModel().selectedIndexes())
        ids = self.model.ids()
        return [ids[r] for r in rows if 0 <= r < len(ids)]

    def current_id(self) -> int | None:
        index = self.list.currentIndex()
        if index.isValid() and self.list.selectionModel().isSelected(index):
            return int(self.model.data(index, ItemIdRole))
        selected = self.selected_ids()
        return selected[0] if selected else None

    def select_ids(self, ids: Sequence[int]) -> None:
        rows = sorted(r for r in (self.model.row_of(i) for i in ids) if r is not None)
        selection = QItemSelection()
        start = prev = None
        for row in [*rows, None]:
            if row is not None and prev is not None and row == prev + 1:
                prev = row
                continue
            if start is not None and prev is not None:
                selection.select(self.model.index(start, 0), self.model.index(prev, 0))
            start = prev = row
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect
        self.list.selectionModel().select(selection, flags)
        if rows:
            self.list.selectionModel().setCurrentIndex(
                self.model.index(rows[0], 0), QItemSelectionModel.SelectionFlag.NoUpdate)

    # ------------------------------------------------------------------ actions

    def _activated(self, index: QModelIndex) -> None:
        if index.isValid():
            self.itemActivated.emit(int(self.model.data(index, ItemIdRole)))

    def open_current(self) -> None:
        item_id = self.current_id()
        if item_id is not None:
            self.itemActivated.emit(item_id)

    def delete_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.controller.trash(ids)  # the main window's Ctrl+Z calls undo_trash

    def use_as_reference(self) -> None:
        item_id = self.current_id()
        if item_id is None:
            return
        item = self.model.item(item_id)
        if item is not None:
            self.controller.useAsReference.emit(str(item.path))
            return

        async def fetch() -> None:
            fetched = await self.controller.item(item_id)
            self.controller.useAsReference.emit(str(fetched.path))

        self.controller.spawn(fetch(), what="using the image as a reference")

    def toggle_favourite(self) -> None:
        ids = self.selected_ids()
        if not ids:
            return
        items = [self.model.item(i) for i in ids]
        make = not all(item is not None and item.favourite for item in items)
        for item_id in ids:
            self.controller.set_favourite(item_id, make)

    def export_selected(self) -> QFileDialog | None:
        """Ask for a folder without blocking (``open()``), then copy the originals."""
        from PySide6.QtWidgets import QFileDialog

        ids = self.selected_ids()
        if not ids:
            return None
        dialog = QFileDialog(self, f"Export {len(ids)} image(s) to folder")
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptOpen)
        dialog.fileSelected.connect(lambda folder: self.export_to(ids, Path(folder)))
        dialog.finished.connect(lambda _r: dialog.deleteLater())
        dialog.open()
        return dialog

    def export_to(self, ids: Sequence[int], folder: Path) -> asyncio.Task[list[Path]]:
        """Copy the items' original files into ``folder`` in a thread, with progress."""
        return self.controller.spawn(self._export(list(ids), folder), what="exporting images")

    async def _export(self, ids: list[int], folder: Path) -> list[Path]:
        import asyncio

        items = await self.controller.items_by_id(ids)
        ordered = [items[i] for i in ids if i in items]
        alive = shiboken6.isValid
        if alive(self):
            self.progress.setRange(0, len(ordered))
            self.progress.setValue(0)
            self.progress.setFormat(f"Exporting %v of {len(ordered)}")
            self.progress.show()
        written: list[Path] = []
        failed: list[str] = []
        try:
            for n, item in enumerate(ordered, 1):
                try:
                    written.append(await asyncio.to_thread(copy_into, item.path, folder))
                except OSError as exc:
                    failed.append(f"{item.path.name}: {exc.strerror or exc}")
                if alive(self):
                    self.progress.setValue(n)
        finally:
            if alive(self):
                self.progress.hide()
        if failed:
            self.controller.error(
                f"Exported {len(written)} of {len(ordered)} image(s) to {folder}; "
                f"failed: {'; '.join(failed[:3])}" + (" …" if len(failed) > 3 else ""))
        else:
            self.controller.info(f"Exported {len(written)} image(s) to {folder}")
        if alive(self):
            self.exportFinished.emit([str(p) for p in written])
        return written


__all__ = [
    "EMPTY_TEXT",
    "MIME_IDS",
    "FavouriteRole",
    "ItemIdRole",
    "ItemRole",
    "LibraryModel",
    "LibraryView",
    "PathRole",
    "copy_into",
    "human_size",
    "short_prompt",
    "since_for",
]

