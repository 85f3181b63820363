"""Synthetic data for the benchmarks: real image files and a library of N items."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

from nbdesk.core.library import Library
from nbdesk.core.paths import Paths

WORDS = (
    "red", "bicycle", "harbour", "lighthouse", "snowy", "mountain", "neon", "alley",
    "astronaut", "coffee", "shop", "isometric", "leopard", "ridge", "golden", "hour",
    "portrait", "watercolor", "city", "night", "rain", "forest", "desert", "castle", "robot",
    "garden", "ocean", "sunset", "vintage", "car", "chalkboard", "latte", "croissant",
)


def render(seed: int, size: tuple[int, int], fmt: str) -> bytes:
    rng = random.Random(seed)
    w, h = size
    base = Image.linear_gradient("L").resize((w, h))
    shift_r, shift_g = rng.randint(0, 255), rng.randint(0, 255)
    img = Image.merge("RGB", (
        base.point(lambda v: (v + shift_r) % 256),
        base.transpose(Image.Transpose.ROTATE_90).resize((w, h)).point(
            lambda v: (v + shift_g) % 256),
        Image.new("L", (w, h), rng.randint(40, 220)),
    ))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.randint(0, w), rng.randint(0, h)
        r = rng.randint(w // 20, w // 5)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=max(2, w // 256))
    buf = io.BytesIO()
    save = {"jpg": ("JPEG", {"quality": 85}), "png": ("PNG", {"compress_level": 1}),
            "webp": ("WEBP", {"quality": 80})}[fmt]
    img.save(buf, save[0], **save[1])
    return buf.getvalue()


def _write_one(args: tuple[str, int, int, str]) -> tuple[str, str, int, int, int, str]:
    root, seed, side, fmt = args
    rng = random.Random(seed)
    ratio = rng.choice([(1, 1), (4, 3), (3, 4), (16, 9), (9, 16)])
    w = side if ratio[0] >= ratio[1] else side * ratio[0] // ratio[1]
    h = side if ratio[1] >= ratio[0] else side * ratio[1] // ratio[0]
    data = render(seed, (w, h), fmt)
    rel = f"images/bench/{seed // 1000:03d}/{seed:06d}.{fmt}"
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel, hashlib.sha256(data).hexdigest(), len(data), w, h, fmt


def build_library(home: Path, n: int, *, side: int = 768, workers: int | None = None) -> Paths:
    """A library of ``n`` items with real image files (cached: reused when complete)."""
    paths = Paths.resolve({"NBDESK_HOME": str(home)})
    marker = home / f".bench-{n}-{side}"
    if marker.exists():
        return paths
    Library(paths).close()  # creates the schema
    fmts = ("jpg", "png", "webp")
    jobs = [(str(paths.root), i, side, fmts[i % 10 % 3] if i % 10 < 3 else "jpg")
            for i in range(n)]
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        rows = list(pool.map(_write_one, jobs, chunksize=64))
    conn = sqlite3.connect(paths.db)
    rng = random.Random(1)
    now = time.time()
    with conn:
        conn.executemany(
            "INSERT INTO items (job_id, idx, path, sha256, size, width, height, format, prompt,"
            " provider, demo, model, params, refs, cost, remote_id, created_at, completed_at)"
            " VALUES (NULL, 0, ?, ?, ?, ?, ?, ?, ?, 'apiframe', 0, 'nano-banana', ?, '[]',"
            " 0.039, NULL, ?, ?)",
            [(rel, sha, size, w, h, {"jpg": "jpeg"}.get(fmt, fmt),
              " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))),
              json.dumps({"v": 1, "aspect_ratio": "1:1"}), now - i * 60, now - i * 60)
             for i, (rel, sha, size, w, h, fmt) in enumerate(rows)],
        )
    conn.close()
    marker.write_text("ok")
    return paths
