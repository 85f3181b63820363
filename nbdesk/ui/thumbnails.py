"""Thumbnails: decoded off the GUI thread, kept on disk by content hash and in memory.

``ThumbnailCache.get`` answers at once from memory, or returns ``None`` after queueing a
load; ``ready(item_id)`` tells the GUI thread when the load is done. Loads run in the
cache's own ``QThreadPool``; a worker goes on with the next waiting request by itself.
Requests wait in a LIFO backlog, so the rows the user is looking at right now go first,
and a bounded backlog forgets requests for rows that scrolled past long ago (they are
asked for again if they come back into view).

A thumbnail is read from ``<cache_dir>/<sha[:2]>/<sha>-<size>.jpg`` when it exists;
otherwise the original is decoded already scaled (``QImageReader.setScaledSize``: never
a full-size decode) and the JPEG is written atomically (temp file + rename). A file that
cannot be read becomes the ``broken`` placeholder, never an exception.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QColor, QImage, QImageReader, QPainter, QPen

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
#: requests waiting for a worker; older ones beyond this are dropped (rows long scrolled by)
DEFAULT_BACKLOG = 400


def scaled_size(size: QSize, long_side: int) -> QSize:
    """``size`` shrunk so that its long side is ``long_side`` (aspect kept; never enlarged)."""
    w, h = size.width(), size.height()
    if w <= 0 or h <= 0 or max(w, h) <= long_side:
        return QSize(w, h)
    if w >= h:
        return QSize(long_side, max(1, round(h * long_side / w)))
    return QSize(max(1, round(w * long_side / h)), long_side)


def decode_image(path: Path | str, long_side: int | None = None) -> QImage:
    """Decode an image file (EXIF orientation applied); a null QImage when it cannot be read.

    With ``long_side`` the decoder scales while decoding (JPEG decodes at a fraction of the
    cost). Safe in any thread: QImage and QImageReader are not tied to the GUI thread.
    """
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    if long_side is not None:
        size = reader.size()
        if size.isValid():
            target = scaled_size(size, long_side)
            if target != size:
                reader.setScaledSize(target)
        else:  # the format cannot tell its size up front: decode, then scale
            image = reader.read()
            if image.isNull() or max(image.width(), image.height()) <= long_side:
                return image
            return image.scaled(
                scaled_size(image.size(), long_side),
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
    return reader.read()


def cache_file(cache_dir: Path, sha256: str, size: int) -> Path:
    return cache_dir / sha256[:2] / f"{sha256}-{size}.jpg"


def _flatten(image: QImage) -> QImage:
    """JPEG has no alpha: paint transparent images over a neutral grey first."""
    if not image.hasAlphaChannel():
        return image
    flat = QImage(image.size(), QImage.Format.Format_RGB32)
    flat.fill(QColor(128, 128, 128))
    painter = QPainter(flat)
    painter.drawImage(0, 0, image)
    painter.end()
    return flat


def load_thumbnail(path: Path, sha256: str, cache_dir: Path, size: int) -> QImage:
    """The thumbnail from the disk cache, or made from the original and cached.

    Runs in a worker thread. A null QImage means the original cannot be read.
    """
    target = cache_file(cache_dir, sha256, size) if sha256 else None
    if target is not None and target.is_file():
        image = decode_image(target)
        if not image.isNull():
            return image
    image = decode_image(path, size)
    if image.isNull() or target is None:
        return image
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
        flat = _flatten(image)
        if flat.save(str(tmp), "JPG", JPEG_QUALITY):  # type: ignore[call-overload]
            os.replace(tmp, target)
        else:
            tmp.unlink(missing_ok=True)
    except OSError as exc:  # a read-only cache folder costs speed, not thumbnails
        log.debug("cannot write thumbnail %s: %s", target, exc)
    return image


def make_placeholder(size: int, broken: bool) -> QImage:
    """A neutral square; the broken one carries a cross."""
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(QColor(0, 0, 0, 0))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(120, 120, 120, 60))
    painter.drawRoundedRect(0, 0, size, size, size / 16, size / 16)
    if broken:
        pen = QPen(QColor(200, 80, 70, 200))
        pen.setWidthF(max(2.0, size / 40))
        painter.setPen(pen)
        m = size * 0.38
        painter.drawLine(int(m), int(m), int(size - m), int(size - m))
        painter.drawLine(int(size - m), int(m), int(m), int(size - m))
    painter.end()
    return image


class _Relay(QObject):
    """Lives in the GUI thread; workers emit on it, the connection is queued."""

    done = Signal(int, str, QImage)


class _Backlog:
    """The requests waiting for a worker, shared by the GUI thread and the workers.

    A worker takes the next request itself when it has answered one, so a run of loads
    (a screenful from the disk cache) does not wait for the GUI thread between loads."""

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.queue: OrderedDict[int, tuple[Path, str]] = OrderedDict()  # newest last
        self.running: set[tuple[int, str]] = set()  # (item id, sha256) being loaded
        self.workers = 0
        self.started = 0
        self.dropped = 0

    def take_locked(self) -> tuple[int, Path, str]:
        item_id, (path, sha256) = self.queue.popitem(last=True)  # newest first
        self.running.add((item_id, sha256))
        self.started += 1
        return item_id, path, sha256

    def next(self) -> tuple[int, Path, str] | None:
        """For a worker that finished a load: its next request, or None (it stops)."""
        with self.lock:
            if not self.queue:
                self.workers -= 1
                return None
            return self.take_locked()


class _Load(QRunnable):
    def __init__(
        self, relay: _Relay, backlog: _Backlog, first: tuple[int, Path, str],
        cache_dir: Path, size: int,
    ) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._relay = relay
        self._backlog = backlog
        self._first = first
        self._cache_dir = cache_dir
        self._size = size

    def run(self) -> None:
        _background_priority()
        request: tuple[int, Path, str] | None = self._first
        while request is not None:
            item_id, path, sha256 = request
            try:
                image = load_thumbnail(path, sha256, self._cache_dir, self._size)
            except Exception:  # a worker must never raise into Qt
                log.exception("thumbnail of %s failed", path)
                image = QImage()
            try:
                self._relay.done.emit(item_id, sha256, image)
            except RuntimeError:  # the cache is gone (shutting down)
                with self._backlog.lock:
                    self._backlog.workers -= 1
                return
            request = self._backlog.next()


class ThumbnailCache(QObject):
    """Thumbnails by item id: memory LRU, disk cache by SHA-256, decoding in threads."""

    ready = Signal(int)  # item id whose thumbnail (or broken placeholder) is now in memory

    def __init__(
        self,
        cache_dir: Path,
        size: int = 256,
        memory_items: int = 500,
        parent: QObject | None = None,
        *,
        backlog: int = DEFAULT_BACKLOG,
        threads: int | None = None,
    ) -> None:
        super().__init__(parent)
        self.cache_dir = Path(cache_dir)
        self.size = size
        self.memory_items = memory_items
        # The pool first: children are destroyed in creation order, so the pool waits
        # for its workers while the relay they emit on still exists.
        self._pool = QThreadPool(self)
        # Leave one core to the GUI thread: decoding must never slow scrolling down.
        self._pool.setMaxThreadCount(threads or max(1, (os.cpu_count() or 2) - 1))
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_done, Qt.ConnectionType.QueuedConnection)
        self._memory: OrderedDict[int, tuple[str, QImage]] = OrderedDict()
        self._backlog = _Backlog(backlog)
        self._broken: set[int] = set()
        self.loading = make_placeholder(size, broken=False)

    @functools.cached_property
    def broken(self) -> QImage:
        """The placeholder of a file that cannot be read (made when one is first met,
        not while the window starts)."""
        return make_placeholder(self.size, broken=True)

    @property
    def loads_started(self) -> int:
        """Loads started (not answered from memory); for tests and the benchmark."""
        return self._backlog.started

    @property
    def dropped(self) -> int:
        """Requests dropped from a full backlog."""
        return self._backlog.dropped

    # ------------------------------------------------------------------ public

    def get(self, item_id: int, path: Path | str, sha256: str) -> QImage | None:
        """The thumbnail if it is in memory; else ``None`` and a load is queued."""
        hit = self._memory.get(item_id)
        if hit is not None and hit[0] == sha256:
            self._memory.move_to_end(item_id)
            return hit[1]
        self._request(item_id, Path(path), sha256, urgent=True)
        return None

    def peek(self, item_id: int) -> QImage | None:
        """The thumbnail if it is in memory, without queueing anything."""
        hit = self._memory.get(item_id)
        return None if hit is None else hit[1]

    def is_broken(self, item_id: int) -> bool:
        """The item's file could not be read (its thumbnail is the broken placeholder)."""
        return item_id in self._broken and item_id in self._memory

    def prefetch(self, entries: Iterable[tuple[int, Path | str, str]]) -> None:
        """Queue loads behind everything already asked for (rows just out of view)."""
        for item_id, path, sha256 in entries:
            hit = self._memory.get(item_id)
            if hit is None or hit[0] != sha256:
                self._request(item_id, Path(path), sha256, urgent=False)

    def forget(self, item_id: int) -> None:
        """Drop one item from memory (its file changed or went away)."""
        self._memory.pop(item_id, None)
        self._broken.discard(item_id)
        with self._backlog.lock:
            self._backlog.queue.pop(item_id, None)

    def clear_memory(self) -> None:
        """Forget every decoded thumbnail and the waiting requests (the disk cache stays)."""
        self._memory.clear()
        self._broken.clear()
        with self._backlog.lock:
            self._backlog.queue.clear()

    def pending(self) -> int:
        """Requests waiting or running."""
        b = self._backlog
        with b.lock:
            return len(b.queue) + len(b.running)

    def wait_for_done(self, msecs: int = -1) -> bool:
        """Block until the running workers finish (shutdown and tests only)."""
        return bool(self._pool.waitForDone(msecs))

    # ------------------------------------------------------------------ queue

    def _request(self, item_id: int, path: Path, sha256: str, *, urgent: bool) -> None:
        b = self._backlog
        with b.lock:
            if (item_id, sha256) in b.running:
                return  # in flight already
            queue = b.queue
            if item_id in queue:
                queue[item_id] = (path, sha256)
                if urgent:
                    queue.move_to_end(item_id)
            else:
                queue[item_id] = (path, sha256)
                if not urgent:
                    queue.move_to_end(item_id, last=False)
            while len(queue) > b.limit:
                queue.popitem(last=False)  # the stalest request
                b.dropped += 1
        self._pump()

    def _pump(self) -> None:
        """Start workers while requests wait and fewer than the pool's threads run."""
        b = self._backlog
        starts = []
        with b.lock:
            while b.queue and b.workers < self._pool.maxThreadCount():
                b.workers += 1
                starts.append(b.take_locked())
        for first in starts:
            self._pool.start(_Load(self._relay, b, first, self.cache_dir, self.size))

    @Slot(int, str, QImage)
    def _on_done(self, item_id: int, sha256: str, image: QImage) -> None:
        with self._backlog.lock:
            self._backlog.running.discard((item_id, sha256))
        if image.isNull():
            self._broken.add(item_id)
            image = self.broken
        else:
            self._broken.discard(item_id)
        self._memory[item_id] = (sha256, image)
        self._memory.move_to_end(item_id)
        while len(self._memory) > self.memory_items:
            old, _ = self._memory.popitem(last=False)
            self._broken.discard(old)
        self.ready.emit(item_id)


_lowered: set[int] = set()
#: How much lower the workers' OS priority is than the GUI thread's. A little is enough
#: for the scheduler to prefer the GUI thread when they compete (the pool already leaves
#: it a core); more makes the workers lose the CPU to every other busy process on a
#: shared machine: next to two busy processes, cold thumbnails ran at 0.2x the raw decode
#: rate at +10, 0.5x at +3, 0.7x at +1, 0.8x without (`python -m bench.probes
#: thumb-renice`).
BACKGROUND_NICE = 1


def _background_priority() -> None:
    """Run this worker thread at a lower OS priority than the GUI thread (Linux and other
    systems where a thread id can be reniced; elsewhere nothing changes)."""
    tid = threading.get_native_id()
    if tid in _lowered or not hasattr(os, "setpriority"):
        return
    _lowered.add(tid)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
