"""Thumbnails: scaled decode in threads, the disk cache by hash, placeholders, LIFO queue."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PySide6.QtGui import QColor, QImage
from pytestqt.qtbot import QtBot

from nbdesk.ui.thumbnails import ThumbnailCache, cache_file, decode_image


def write_image(path: Path, width: int, height: int, fmt: str, alpha: bool = False) -> str:
    """A real image file (a colour ramp, translucent with ``alpha``); returns its SHA-256."""
    image = QImage(width, height, QImage.Format.Format_ARGB32)
    image.fill(QColor(30, 120, 200, 100 if alpha else 255))
    for x in range(width):
        image.setPixelColor(x, height // 2, QColor(x % 256, 90, 160, 255))
    assert image.save(str(path), fmt)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(qtbot: QtBot, cache: ThumbnailCache, item_id: int, path: Path, sha: str) -> QImage:
    assert cache.get(item_id, path, sha) is None
    with qtbot.waitSignal(cache.ready, check_params_cb=lambda i: i == item_id, timeout=10_000):
        pass
    image = cache.get(item_id, path, sha)
    assert image is not None
    return image


def test_jpeg_thumbnail_has_the_right_size_and_is_cached_on_disk(
    qtbot: QtBot, tmp_path: Path
) -> None:
    original = tmp_path / "photo.jpg"
    sha = write_image(original, 800, 600, "JPG")
    cache = ThumbnailCache(tmp_path / "thumbs", size=256)
    image = load(qtbot, cache, 1, original, sha)
    assert (image.width(), image.height()) == (256, 192)
    on_disk = cache_file(tmp_path / "thumbs", sha, 256)
    assert on_disk == tmp_path / "thumbs" / sha[:2] / f"{sha}-256.jpg"
    assert on_disk.is_file() and QImage(str(on_disk)).size() == image.size()
    assert not [p for p in on_disk.parent.iterdir() if p.name.endswith(".tmp")]
    # answered from memory now: no second load
    assert cache.get(1, original, sha) is not None and cache.loads_started == 1

    # A second cache (a new session) reads the disk cache: the original is not needed.
    original.unlink()
    second = ThumbnailCache(tmp_path / "thumbs", size=256)
    again = load(qtbot, second, 1, original, sha)
    assert again.size() == image.size() and not second.is_broken(1)


def test_png_portrait_with_alpha_keeps_its_aspect(qtbot: QtBot, tmp_path: Path) -> None:
    original = tmp_path / "tall.png"
    sha = write_image(original, 300, 900, "PNG", alpha=True)
    cache = ThumbnailCache(tmp_path / "thumbs", size=256)
    image = load(qtbot, cache, 7, original, sha)
    assert (image.width(), image.height()) == (85, 256)
    assert QImage(str(cache_file(tmp_path / "thumbs", sha, 256))).size() == image.size()


def test_exif_orientation_is_applied(qtbot: QtBot, tmp_path: Path) -> None:
    original = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.new("RGB", (400, 200), (200, 40, 40)).save(original, "JPEG", exif=exif)
    sha = hashlib.sha256(original.read_bytes()).hexdigest()
    cache = ThumbnailCache(tmp_path / "thumbs", size=256)
    image = load(qtbot, cache, 3, original, sha)
    assert (image.width(), image.height()) == (128, 256)


def test_small_images_are_not_enlarged(tmp_path: Path) -> None:
    original = tmp_path / "small.png"
    write_image(original, 40, 20, "PNG")
    assert decode_image(original, 256).size().toTuple() == (40, 20)
    assert decode_image(original).size().toTuple() == (40, 20)


def test_unreadable_and_missing_files_give_the_broken_placeholder(
    qtbot: QtBot, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 50)
    cache = ThumbnailCache(tmp_path / "thumbs", size=128)
    broken = load(qtbot, cache, 1, garbage, "ab" * 32)
    missing = load(qtbot, cache, 2, tmp_path / "nowhere.jpg", "cd" * 32)
    assert broken is cache.broken and missing is cache.broken
    assert cache.is_broken(1) and cache.is_broken(2)
    assert broken.size().toTuple() == (128, 128)
    assert not (tmp_path / "thumbs").exists() or not any((tmp_path / "thumbs").rglob("*.jpg"))


def test_requests_in_flight_are_deduplicated(qtbot: QtBot, tmp_path: Path) -> None:
    original = tmp_path / "a.jpg"
    sha = write_image(original, 600, 400, "JPG")
    cache = ThumbnailCache(tmp_path / "thumbs", size=64)
    with qtbot.waitSignal(cache.ready, timeout=10_000):
        for _ in range(5):
            assert cache.get(9, original, sha) is None
    assert cache.loads_started == 1 and cache.pending() == 0


@pytest.fixture
def hold_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Workers hold their loads until the event is set: the requests a test makes are
    all queued before any worker takes the next one (else, on a loaded machine, a
    worker may finish its first load and take a request the test has not queued yet)."""
    import nbdesk.ui.thumbnails as thumbnails

    queued = threading.Event()
    real_load = thumbnails.load_thumbnail

    def held_load(*args: Any, **kwargs: Any) -> Any:
        queued.wait(10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(thumbnails, "load_thumbnail", held_load)
    try:
        yield queued
    finally:
        queued.set()


def test_newest_requests_go_first_and_stale_ones_are_dropped(
    qtbot: QtBot, tmp_path: Path, hold_loads: threading.Event
) -> None:
    files = []
    for i in range(6):
        path = tmp_path / f"{i}.jpg"
        files.append((i, path, write_image(path, 320, 240, "JPG")))
    cache = ThumbnailCache(tmp_path / "thumbs", size=64, threads=1, backlog=3)
    order: list[int] = []
    cache.ready.connect(order.append)
    for item_id, path, sha in files:
        assert cache.get(item_id, path, sha) is None
    assert cache.dropped == 2  # items 1 and 2: the oldest waiting requests
    hold_loads.set()
    qtbot.waitUntil(lambda: len(order) == 4, timeout=10_000)
    assert order == [0, 5, 4, 3]  # 0 was already running; then newest first
    assert cache.peek(1) is None and cache.peek(2) is None
    # a dropped row asked for again (it scrolled back into view) loads normally
    assert load(qtbot, cache, 1, files[1][1], files[1][2]).width() == 64


def test_prefetch_waits_behind_visible_requests(
    qtbot: QtBot, tmp_path: Path, hold_loads: threading.Event
) -> None:
    files = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        files.append((i, path, write_image(path, 100, 100, "PNG")))
    cache = ThumbnailCache(tmp_path / "thumbs", size=32, threads=1)
    order: list[int] = []
    cache.ready.connect(order.append)
    cache.get(*files[0])  # starts at once
    cache.prefetch([files[1], files[2]])
    cache.get(*files[3])
    hold_loads.set()
    qtbot.waitUntil(lambda: len(order) == 4, timeout=10_000)
    assert order[:2] == [0, 3]
    cache.clear_memory()
    assert cache.peek(0) is None
