"""Focused probes (see bench/README.md): each isolates one cost the scenarios showed.

``python -m bench.probes NAME`` with NAME one of:

* ``startup-phases``: timestamps of the app's start-up phases up to the first paint
  (imports in the app's order, runtime, window construction, show), process start = 0.
  The HTTP client and the engine start after the first paint and are not in it.
* ``queue-tick``: the queue panel's once-a-second ``JobsModel.tick`` at 50/100/200 running
  jobs, with the panel's ResizeToContents columns and with Interactive ones.
* ``download``: the engine's download path against alternatives (verify-only image
  check; hashing and writing on a queue-fed thread), on asyncio and qasync.
* ``search``: the library's search SQL against newest-first by FTS5 rowid.
* ``reopen-trace``: the warm reopen's timeline (ids query, page fetch, thumbnail loads).
* ``thumb-overhead``: where ThumbnailCache spends its time beyond the decode.
* ``thumb-renice``: ThumbnailCache vs raw decode while two other processes keep the cores
  busy, with and without the workers' renice to +10.

Run them headless (QT_QPA_PLATFORM=offscreen); they print plain text.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import OUT, ROOT, child_env

# ---------------------------------------------------------------------------- start-up


def startup_phases(runs: int = 5) -> None:
    env = child_env({"NBDESK_HOME": str(OUT / "lib10k")})
    rows = []
    for _ in range(runs):
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "bench.startup", "phases", str(t0)],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = list(rows[0])
    print(f"ms after the process was spawned (median of {runs} runs), and the step from "
          "the previous mark:")
    prev = 0.0
    for k in keys:
        v = statistics.median(r[k] for r in rows)
        print(f"  {v:7.1f}  (+{v - prev:6.1f})  {k}")
        prev = v


# ---------------------------------------------------------------------------- queue


def queue_tick() -> None:
    import uuid
    from types import SimpleNamespace

    from PySide6.QtWidgets import QApplication, QHeaderView, QTableView

    import nbdesk.ui.queue_model as queue_model
    from nbdesk.core.jobs import Job, JobParams, JobState
    from nbdesk.ui.queue_model import COLUMNS, PROMPT, JobsModel

    app = QApplication([sys.argv[0]])
    calls = [0]  # cells the tick changed (the table reads them from C++ since session 4)
    now = time.time()

    def job(i: int) -> Job:
        return Job(id=str(uuid.uuid4()), idem_key="k", created_at=now - i, updated_at=now,
                   provider="apiframe", demo=False, model="nano-banana", prompt=f"job {i}",
                   params=JobParams(), refs=(), parent_item=None, state=JobState.RUNNING)

    for mode in ("ResizeToContents (as QueueView)", "Interactive"):
        model = JobsModel()
        model.dataChanged.connect(lambda *_a: calls.__setitem__(0, calls[0] + 1))
        view = QTableView()
        view.setModel(model)
        view.resize(520, 400)
        header = view.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(
                col, QHeaderView.ResizeMode.ResizeToContents
                if mode.startswith("Resize") and col != PROMPT
                else QHeaderView.ResizeMode.Interactive)
        view.show()
        app.processEvents()
        for n in (50, 100, 200):
            while model.rowCount() < n:
                model.upsert(job(model.rowCount()))
            app.processEvents()
            calls[0] = 0
            # a minute on (each n): every running job's Elapsed text changes
            later = SimpleNamespace(time=lambda n=n: now + 60 * n)
            queue_model.time = later  # type: ignore[assignment]
            t0 = time.perf_counter()
            model.tick()
            app.processEvents()  # and its repaint
            spent = time.perf_counter() - t0
            print(f"{mode:32s} {n:4d} running jobs: one tick() and its repaint "
                  f"{spent * 1000:9.1f} ms, {calls[0]:5,d} cells changed")
        view.close()


# ---------------------------------------------------------------------------- download


def _verify_only(path: Path) -> tuple[str | None, tuple[int, int]]:
    from PIL import Image

    with Image.open(path) as im:
        info = (im.format, im.size)
        im.verify()  # PNG: the CRC of every chunk, through IEND (a cut file fails)
    return info


async def _download_variants(url: str, reps: int) -> None:
    from nbdesk.api.http import download_to, make_client
    from nbdesk.api.images import probe_file
    from nbdesk.core.engine import fetch_image

    client = make_client()
    dest = OUT / "tmp" / "probe-download.part"
    dest.parent.mkdir(parents=True, exist_ok=True)

    async def base() -> None:
        async with client.stream("GET", url) as r:
            async for _b in r.aiter_raw(1 << 20):
                pass

    async def engine() -> None:
        await fetch_image(client, url, dest, 100 << 20, origin=url)

    async def full_probe() -> None:
        await download_to(client, url, dest, origin=url, max_bytes=100 << 20)
        await asyncio.to_thread(probe_file, dest)

    async def engine_verify() -> None:
        await download_to(client, url, dest, origin=url, max_bytes=100 << 20)
        await asyncio.to_thread(_verify_only, dest)

    async def writer_thread() -> None:
        blocks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

        def work() -> None:
            digest = hashlib.sha256()
            with open(dest, "wb") as fh:
                while (b := blocks.get()) is not None:
                    digest.update(b)
                    fh.write(b)
                fh.flush()
                os.fsync(fh.fileno())

        worker = threading.Thread(target=work)
        worker.start()
        async with client.stream("GET", url) as r:
            async for b in r.aiter_raw(1 << 20):
                blocks.put(b)
        blocks.put(None)
        await asyncio.to_thread(worker.join)
        await asyncio.to_thread(_verify_only, dest)

    variants: list[tuple[str, Callable[[], Any]]] = [
        ("httpx to /dev/null (baseline)", base),
        ("engine.fetch_image (PNG checked as it streams)", engine),
        ("download_to + probe_file (the full second pass)", full_probe),
        ("download_to + verify-only check", engine_verify),
        ("hash+write on a queue-fed thread + verify-only", writer_thread),
    ]
    times: dict[str, list[float]] = {}
    await base()
    for _ in range(reps):
        for name, fn in variants:
            t0 = time.perf_counter()
            await fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
    await client.aclose()
    dest.unlink(missing_ok=True)
    b = statistics.median(times[variants[0][0]])
    for name, _fn in variants:
        m = statistics.median(times[name])
        print(f"  {name:48s} {m * 1000:7.1f} ms   baseline/this {b / m:.2f}")


def download(reps: int = 5) -> None:
    from PIL import Image

    from bench.datasets import noise_png

    png = noise_png()
    data = png.read_bytes()

    def t(label: str, fn: Callable[[], object]) -> None:
        best = min(_timed(fn) for _ in range(3))
        print(f"  {label:44s} {best * 1000:7.1f} ms")

    def decode() -> None:
        with Image.open(png) as im:
            im.load()

    def verify() -> None:
        _verify_only(png)

    from nbdesk.api.images import PngStreamCheck, probe_file

    def stream_check() -> None:
        check = PngStreamCheck()
        for i in range(0, len(data), 1 << 20):
            check.feed(data[i:i + (1 << 20)])
        check.result()

    print(f"components, {len(data) / 1e6:.0f} MB PNG:")
    t("sha256", lambda: hashlib.sha256(data).hexdigest())
    t("PngStreamCheck, 1 MiB blocks", stream_check)
    t("read_bytes", png.read_bytes)
    t("PIL open + verify (chunk CRCs)", verify)
    t("PIL open + load (full decode)", decode)
    t("probe_file (verify + full decode of a copy)", lambda: probe_file(png))
    server = subprocess.Popen([sys.executable, "-m", "bench.fileserver", str(png.parent)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/{png.name}"
        print("plain asyncio:")
        asyncio.run(_download_variants(url, reps))
        import qasync
        from PySide6.QtWidgets import QApplication

        app = QApplication([sys.argv[0]])
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        print("qasync (the window's loop):")
        with loop:
            loop.run_until_complete(_download_variants(url, reps))
    finally:
        server.terminate()


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- search


def search() -> None:
    import sqlite3

    from bench.datasets import search100k
    from bench.search import queries
    from nbdesk.core.library import fts_query

    src = sqlite3.connect(search100k() / "library.sqlite3")
    conn = sqlite3.connect(":memory:")
    src.backup(conn)
    now_page = ("SELECT items.* FROM items JOIN items_fts ON items_fts.rowid = items.id"
                " WHERE items.deleted_at IS NULL AND items_fts MATCH ?"
                " ORDER BY items.completed_at DESC, items.id DESC LIMIT 50")
    rowid_page = ("SELECT items.* FROM items_fts JOIN items ON items.id = items_fts.rowid"
                  " WHERE items_fts MATCH ? AND items.deleted_at IS NULL"
                  " ORDER BY items_fts.rowid DESC LIMIT 50")
    now_ids = ("SELECT items.id FROM items JOIN items_fts ON items_fts.rowid = items.id"
               " WHERE items.deleted_at IS NULL AND items_fts MATCH ?"
               " ORDER BY items.completed_at DESC, items.id DESC")
    fts_ids = "SELECT rowid FROM items_fts WHERE items_fts MATCH ? ORDER BY rowid DESC"
    for sql in (now_page, rowid_page):
        plan = conn.execute("EXPLAIN QUERY PLAN " + sql, ("x",)).fetchall()
        print("plan:", " / ".join(str(p[3]) for p in plan))

    def t(sql: str, q: str) -> float:
        args = (fts_query(q),)
        return statistics.median(_timed(lambda: conn.execute(sql, args).fetchall())
                                 for _ in range(7)) * 1000

    print(f"{'query':22s} {'page now':>9s} {'page rowid':>11s} {'ids now':>8s} "
          f"{'fts ids':>8s} {'matches':>8s}")
    cols: list[list[float]] = [[], [], [], []]
    for q in queries():
        vals = [t(now_page, q), t(rowid_page, q), t(now_ids, q), t(fts_ids, q)]
        n = len(conn.execute(fts_ids, (fts_query(q),)).fetchall())
        for c, v in zip(cols, vals, strict=True):
            c.append(v)
        print(f"{q:22s} {vals[0]:9.1f} {vals[1]:11.1f} {vals[2]:8.1f} {vals[3]:8.1f} {n:8d}")
    print(f"{'median':22s} " + " ".join(f"{statistics.median(c):{w}.1f}"
                                        for c, w in zip(cols, (9, 11, 8, 8), strict=True)))


# ---------------------------------------------------------------------------- reopen


def reopen_trace(runs: int = 3) -> None:
    env = child_env({"NBDESK_HOME": str(OUT / "lib10k")})
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-m", "bench.probes", "_reopen-child"],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])


def _reopen_child() -> None:
    import bench.startup as bs
    import nbdesk.core.library as libm
    import nbdesk.ui.library_view as lv
    import nbdesk.ui.thumbnails as th

    marks: list[tuple[str, float]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*a: Any, **k: Any) -> Any:
                marks.append((label + ">", time.monotonic()))
                r = await fn(*a, **k)
                marks.append((label + "<", time.monotonic()))
                return r
            setattr(owner, name, awrapper)
        else:
            @functools.wraps(fn)
            def wrapper(*a: Any, **k: Any) -> Any:
                marks.append((label + ">", time.monotonic()))
                r = fn(*a, **k)
                marks.append((label + "<", time.monotonic()))
                return r
            setattr(owner, name, wrapper)

    wrap(libm.Library, "item_ids", "ids(db)")
    wrap(libm.Library, "items_by_id", "page(db)")
    wrap(lv.LibraryModel, "_apply", "apply")
    wrap(lv.LibraryModel, "_fetch", "fetch")
    wrap(th, "load_thumbnail", "thumb")

    def done(result: dict[str, Any]) -> None:
        base = result["show"]
        parts = [f"{k} {(t - base) * 1000:.0f}" for k, t in marks if t >= base - 0.5]
        parts.append(f"ALL DRAWN {(result.get('after', base) - base) * 1000:.0f} ms")
        print("show 0 | " + " | ".join(parts))
        sys.stdout.flush()
        os._exit(0)

    bs._done = done
    bs.app(wait_drawn=True)


# ---------------------------------------------------------------------------- thumbnails


def thumb_overhead(n: int = 600) -> None:
    import shutil
    import tempfile

    from PySide6.QtCore import QEventLoop
    from PySide6.QtGui import QGuiApplication, QImageReader

    import nbdesk.ui.thumbnails as th
    from bench.datasets import thumbs2k

    app = QGuiApplication([sys.argv[0]])
    root = OUT / "thumbs2k"
    files = [(i, root / str(e["rel"]), str(e["sha256"])) for i, e in enumerate(thumbs2k()[:n])]
    for _i, p, _s in files:
        p.read_bytes()
    spent = {"load": 0.0, "decode": 0.0}
    decode, load = th.decode_image, th.load_thumbnail

    def timed_decode(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        r = decode(*a, **k)
        spent["decode"] += time.perf_counter() - t0
        return r

    def timed_load(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        r = load(*a, **k)
        spent["load"] += time.perf_counter() - t0
        return r

    th.decode_image = timed_decode
    th.load_thumbnail = timed_load
    t0 = time.perf_counter()
    for _i, p, _s in files:
        reader = QImageReader(str(p))
        reader.setScaledSize(th.scaled_size(reader.size(), 160))
        reader.read()
    raw = time.perf_counter() - t0
    cache_dir = Path(tempfile.mkdtemp(dir=OUT / "tmp"))
    cache = th.ThumbnailCache(cache_dir, size=160, backlog=n + 1)
    count = [0]
    loop = QEventLoop()

    def ready(_id: int) -> None:
        count[0] += 1
        if count[0] == n:
            loop.quit()

    cache.ready.connect(ready)
    t0 = time.perf_counter()
    cache.prefetch(files)
    loop.exec()
    total = time.perf_counter() - t0
    cache.wait_for_done()
    shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"{n} images; per image: raw decode {raw / n * 1000:.2f} ms | cache total "
          f"{total / n * 1000:.2f} ms = decode {spent['decode'] / n * 1000:.2f} + cache check, "
          f"JPEG encode, write, rename {(spent['load'] - spent['decode']) / n * 1000:.2f} + "
          f"worker idle between loads (GUI round trip) "
          f"{(total - spent['load']) / n * 1000:.2f} ms")
    app.quit()


def thumb_renice(n: int = 500) -> None:
    """ThumbnailCache vs raw decode while two other processes keep both cores busy, with
    the workers' renice to +10 (as shipped) and without it."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for mode in ("renice", "no-renice", "renice", "no-renice"):
            out = subprocess.run([sys.executable, "-m", "bench.probes", "_thumbs-child",
                                  str(n), mode], cwd=ROOT, capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"2 busy processes, workers {mode:9s}: raw {r['raw_ips']:5.1f}/s, cache "
                  f"{r['cache_ips']:5.1f}/s, cache/raw {r['ratio']:.2f}")
    finally:
        for b in burners:
            b.kill()
            b.wait()


def _thumbs_child(n: int, mode: str) -> None:
    import nbdesk.ui.thumbnails as th
    from bench.thumbs import run

    if mode == "no-renice":
        th._background_priority = lambda: None
    print(json.dumps(run(n, "raw")))


PROBES: dict[str, Callable[[], None]] = {
    "startup-phases": startup_phases,
    "queue-tick": queue_tick,
    "download": download,
    "search": search,
    "reopen-trace": reopen_trace,
    "thumb-overhead": thumb_overhead,
    "thumb-renice": thumb_renice,
}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name == "_reopen-child":
        _reopen_child()
    elif name == "_thumbs-child":
        _thumbs_child(int(sys.argv[2]), sys.argv[3])
    elif name in PROBES:
        PROBES[name]()
    else:
        print(__doc__)
        sys.exit(2)
