"""Scenario child: cold thumbnail generation throughput, ThumbnailCache vs raw decode.

Both sides decode the same 2,000 files (1024-4096 px JPEG/PNG/WebP, already in the page
cache) to the grid's thumbnail size with the same number of threads (the cache's own
default: one less than the cores). The baseline is a bare QThreadPool of QRunnables that
only run ``QImageReader`` with ``setScaledSize``; the cache run is ``ThumbnailCache``
with an empty disk cache and a backlog big enough to keep every request, timed from
the requests until the last ``ready`` signal reached the GUI thread.

``python -m bench.thumbs N FIRST`` (FIRST = raw | cache: which side runs first).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import OUT, emit


def run(n: int, first: str) -> dict[str, Any]:
    from PySide6.QtCore import QEventLoop, QRunnable, QThreadPool, QTimer
    from PySide6.QtGui import QGuiApplication, QImageReader

    from bench.datasets import thumbs2k
    from nbdesk.app import tune_process
    from nbdesk.ui.main_window import GRID_ICON
    from nbdesk.ui.thumbnails import ThumbnailCache, scaled_size

    tune_process()  # the app's process settings (both the cache and the raw decode)
    app = QGuiApplication([sys.argv[0]])
    root = OUT / "thumbs2k"
    entries = thumbs2k(n)[:n]
    files = [(i, root / str(e["rel"]), str(e["sha256"])) for i, e in enumerate(entries)]
    for _i, path, _sha in files:  # both sides read from the page cache
        path.read_bytes()
    size = GRID_ICON  # at device pixel ratio 1, as MainWindow sizes its cache
    scratch = OUT / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)

    class RawDecode(QRunnable):
        def __init__(self, path: Path, ok: list[bool]) -> None:
            super().__init__()
            self.setAutoDelete(True)
            self.path = path
            self.ok = ok

        def run(self) -> None:
            reader = QImageReader(str(self.path))
            full = reader.size()
            if full.isValid():
                reader.setScaledSize(scaled_size(full, size))
            self.ok.append(not reader.read().isNull())

    def raw(threads: int) -> tuple[float, int]:
        pool = QThreadPool()
        pool.setMaxThreadCount(threads)
        ok: list[bool] = []
        t0 = time.perf_counter()
        for _i, path, _sha in files:
            pool.start(RawDecode(path, ok))
        pool.waitForDone()
        return time.perf_counter() - t0, sum(ok)

    def cached() -> tuple[float, int, int]:
        cache_dir = Path(tempfile.mkdtemp(prefix="thumbs-", dir=scratch))
        cache = ThumbnailCache(cache_dir, size=size, backlog=n + 1)
        done = [0]
        loop = QEventLoop()

        def ready(_item_id: int) -> None:
            done[0] += 1
            if done[0] == n:
                loop.quit()

        cache.ready.connect(ready)
        QTimer.singleShot(600_000, loop.quit)
        t0 = time.perf_counter()
        cache.prefetch(files)
        loop.exec()
        elapsed = time.perf_counter() - t0
        broken = sum(1 for i, _p, _s in files if cache.is_broken(i))
        cache.wait_for_done()
        written = sum(1 for _ in cache_dir.rglob("*.jpg"))
        del cache
        shutil.rmtree(cache_dir, ignore_errors=True)
        return elapsed, done[0] - broken, written

    probe = ThumbnailCache(scratch / "unused", size=size)
    threads = probe._pool.maxThreadCount()
    del probe
    result: dict[str, Any] = {"images": n, "threads": threads, "size": size,
                              "bytes_mb": round(sum(p.stat().st_size for _i, p, _s in files)
                                                / 1e6, 1)}
    for side in ((first, "cache" if first == "raw" else "raw")):
        if side == "raw":
            t, ok = raw(threads)
            result.update(raw_s=round(t, 3), raw_ok=ok, raw_ips=round(n / t, 1))
        else:
            t, ok, written = cached()
            result.update(cache_s=round(t, 3), cache_ok=ok, cache_written=written,
                          cache_ips=round(n / t, 1))
    result["ratio"] = round(result["cache_ips"] / result["raw_ips"], 3)
    app.quit()
    return result


if __name__ == "__main__":
    emit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
             sys.argv[2] if len(sys.argv) > 2 else "raw"))
