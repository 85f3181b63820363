"""The benchmark's data sets, built once and cached under bench/out/ (a marker file per set).

* ``lib10k``: a 10,000-item library with real image files (``bench.data.build_library``).
* ``thumbs2k``: 2,000 real JPEG/PNG/WebP files at 1024-4096 px (long side), 80 % JPEG,
  10 % PNG, 10 % WebP like the library, for the thumbnail throughput scenario.
* ``search100k``: a library database of 100,000 items (rows only, no files) whose
  prompts use a Zipf-distributed vocabulary of ~1,500 words, for full-text search.
* ``download/4k-noise.png``: a 4096x4096 PNG of noise (~50 MB; does not compress).
* ``queue-pool``: distinct 1024 px JPEGs the queue scenario's simulator serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.common import OUT
from bench.data import WORDS, _write_one, build_library, render

THUMB_SIDES = (1024, 1536, 2048, 3072, 4096)
SEARCH_ITEMS = 100_000
QUEUE_POOL = 256


def lib10k() -> Path:
    home = OUT / "lib10k"
    build_library(home, 10_000)
    return home


def _fmt(i: int) -> str:
    return ("jpg", "png", "webp")[i % 10 % 3] if i % 10 < 3 else "jpg"


def thumbs2k(n: int = 2000) -> list[dict[str, object]]:
    """``n`` image files; returns the manifest (rel path, sha256, size, format, side)."""
    root = OUT / "thumbs2k"
    manifest = root / f"manifest-{n}.json"
    if manifest.exists():
        return list(json.loads(manifest.read_text()))
    jobs = [(str(root), i, THUMB_SIDES[(i // 10) % len(THUMB_SIDES)], _fmt(i))
            for i in range(n)]
    # the slowest (big WebP/PNG) first, so the pool's tail is short
    jobs.sort(key=lambda j: -j[2] * (3 if j[3] != "jpg" else 1))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        rows = list(pool.map(_write_one, jobs, chunksize=4))
    entries = [{"rel": rel, "sha256": sha, "size": size, "width": w, "height": h,
                "format": fmt} for rel, sha, size, w, h, fmt in rows]
    entries.sort(key=lambda e: str(e["rel"]))
    manifest.write_text(json.dumps(entries))
    return entries


def _vocabulary(rng: random.Random) -> list[str]:
    """The data set's own words first (the commonest), then made-up ones."""
    syll = ("ka", "lo", "mi", "ren", "sa", "tor", "vel", "an", "dri", "que", "zo", "pha",
            "lin", "mar", "sel", "ta", "ur", "bel", "cor", "nix")
    extra: set[str] = set()
    while len(extra) < 1500:
        extra.add("".join(rng.choice(syll) for _ in range(rng.randint(2, 4))))
    return [*WORDS, *sorted(extra)]


def search100k(n: int = SEARCH_ITEMS) -> Path:
    """A library database with ``n`` items (no image files): only search reads it."""
    from nbdesk.core.library import Library
    from nbdesk.core.paths import Paths

    home = OUT / f"search{n // 1000}k"
    marker = home / f".bench-search-{n}"
    if marker.exists():
        return home
    paths = Paths.resolve({"NBDESK_HOME": str(home)})
    if paths.db.exists():
        paths.db.unlink()
    Library(paths).close()
    rng = random.Random(7)
    vocab = _vocabulary(rng)
    weights = [1 / (rank + 1) ** 1.05 for rank in range(len(vocab))]
    now = time.time()
    rows = []
    for i in range(n):
        words = rng.choices(vocab, weights, k=rng.randint(6, 30))
        prompt = " ".join(words)
        digest = hashlib.sha256(f"{i}".encode()).hexdigest()
        rows.append((f"images/none/{i:06d}.jpg", digest, 1000, 1024, 1024, "jpeg", prompt,
                     json.dumps({"v": 1, "aspect_ratio": "1:1"}), now - i * 30, now - i * 30))
    conn = sqlite3.connect(paths.db)
    with conn:
        conn.executemany(
            "INSERT INTO items (job_id, idx, path, sha256, size, width, height, format, prompt,"
            " provider, demo, model, params, refs, cost, remote_id, created_at, completed_at)"
            " VALUES (NULL, 0, ?, ?, ?, ?, ?, ?, ?, 'apiframe', 0, 'nano-banana', ?, '[]',"
            " 0.039, NULL, ?, ?)", rows)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    marker.write_text("ok")
    return home


def noise_png(side: int = 4096) -> Path:
    """A PNG of random pixels: tens of MB that do not compress away."""
    from PIL import Image

    path = OUT / "download" / f"{side}-noise.png"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.frombytes("RGB", (side, side), random.Random(3).randbytes(side * side * 3))
    tmp = path.with_suffix(".tmp")
    img.save(tmp, "PNG", compress_level=1)
    os.replace(tmp, path)
    return path


def _pool_one(args: tuple[str, int]) -> None:
    folder, i = args
    Path(folder, f"{i:04d}.jpg").write_bytes(render(10_000 + i, (1024, 1024), "jpg"))


def queue_pool(n: int = QUEUE_POOL) -> Path:
    """``n`` distinct 1024x1024 JPEGs (the simulator serves job k the file k mod n)."""
    folder = OUT / "queue-pool"
    marker = folder / f".bench-{n}"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_pool_one, [(str(folder), i) for i in range(n)], chunksize=8))
    marker.write_text("ok")
    return folder


def build_all(only: set[str] | None = None, log: object = print) -> None:
    def want(name: str) -> bool:
        return only is None or name in only

    steps = (
        ("lib10k", ("startup", "scroll", "reopen", "queue"), lib10k),
        ("thumbs2k", ("thumbnails",), thumbs2k),
        ("search100k", ("search",), search100k),
        ("4k-noise.png", ("download",), noise_png),
        ("queue-pool", ("queue",), queue_pool),
    )
    for name, users, build in steps:
        if any(want(u) for u in users):
            t0 = time.perf_counter()
            build()
            spent = time.perf_counter() - t0
            if spent > 1:
                log(f"built {name} in {spent:.0f} s")  # type: ignore[operator]


if __name__ == "__main__":
    build_all()
