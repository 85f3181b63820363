"""Deterministic demo images for the simulator.

A job's picture depends only on its seed, its size, its prompt and its format, so any
simulator instance renders the same bytes for the same job.  Encoding a 4K PNG takes
a while, so rendered bytes are kept in a small LRU cache shared by the process.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
import textwrap
import threading
from collections import OrderedDict
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFilter, ImageFont

BASE_SIDES: dict[str | None, int] = {None: 1024, "1K": 1024, "2K": 2048, "4K": 4096}

CONTENT_TYPES: dict[str, str] = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
}

_PIL_FORMATS: dict[str, str] = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def image_size(aspect_ratio: str, resolution: str | None) -> tuple[int, int]:
    """Pixel size for a ratio "a:b" at a resolution: about base² pixels, sides multiples of 16."""
    base = BASE_SIDES.get(resolution, 1024)
    a_text, _, b_text = aspect_ratio.partition(":")
    a, b = int(a_text), int(b_text)
    area = base * base
    w = math.sqrt(area * a / b)
    h = area / w
    return _round16(w), _round16(h)


def _round16(x: float) -> int:
    return max(16, round(x / 16) * 16)


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


@lru_cache(maxsize=16)
def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow without FreeType: the bitmap font, fixed size
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: _Font) -> float:
    return draw.textlength(text, font=font)


def render(seed: int, width: int, height: int, prompt: str, caption: str = "") -> Image.Image:
    """Render the picture (RGB): a soft gradient, a few shapes and the prompt text."""
    rng = random.Random(seed)
    hue = rng.random()
    spread = rng.uniform(0.12, 0.35) * rng.choice((-1, 1))
    c_top = _rgb(hue, rng.uniform(0.55, 0.8), rng.uniform(0.55, 0.75))
    c_bottom = _rgb(hue + spread, rng.uniform(0.6, 0.9), rng.uniform(0.18, 0.35))
    c_glow = _rgb(hue + spread / 2 + 0.5, rng.uniform(0.3, 0.6), 0.95)

    # Everything soft is drawn on a small canvas, blurred and scaled up: fast at any size.
    sw = max(16, width // 24)
    sh = max(16, height // 24)
    angle = rng.uniform(0.25, 0.75) * math.pi  # mostly top to bottom
    dx, dy = math.cos(angle), math.sin(angle)
    lo = min(0.0, dx * (sw - 1)) + min(0.0, dy * (sh - 1))
    hi = max(0.0, dx * (sw - 1)) + max(0.0, dy * (sh - 1))
    span = (hi - lo) or 1.0
    pixels: list[tuple[int, int, int]] = []
    for py in range(sh):
        for px in range(sw):
            f = (px * dx + py * dy - lo) / span
            f = f * f * (3 - 2 * f)  # smoothstep
            pixels.append((
                round(c_top[0] + (c_bottom[0] - c_top[0]) * f),
                round(c_top[1] + (c_bottom[1] - c_top[1]) * f),
                round(c_top[2] + (c_bottom[2] - c_top[2]) * f),
            ))
    base = Image.new("RGB", (sw, sh))
    base.putdata(pixels)
    canvas = base.convert("RGBA")

    soft = Image.new("RGBA", (sw, sh), (0, 0, 0, 0))
    sdraw = ImageDraw.Draw(soft)
    gx, gy = rng.uniform(0.2, 0.8) * sw, rng.uniform(0.15, 0.5) * sh
    gr = rng.uniform(0.25, 0.45) * max(sw, sh)
    sdraw.ellipse((gx - gr, gy - gr, gx + gr, gy + gr), fill=(*c_glow, 90))
    for _ in range(rng.randint(5, 9)):
        r = rng.uniform(0.04, 0.16) * max(sw, sh)
        x, y = rng.uniform(0, sw), rng.uniform(0, sh)
        color = _rgb(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.2, 0.6), rng.uniform(0.8, 1.0))
        sdraw.ellipse((x - r, y - r, x + r, y + r), fill=(*color, rng.randint(40, 110)))
    canvas = Image.alpha_composite(canvas, soft.filter(ImageFilter.GaussianBlur(1.6)))
    img = canvas.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)

    # Crisp shapes and the text go on one full-size overlay, composited once.
    unit = min(width, height)
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line = max(2, unit // 256)
    for _ in range(rng.randint(2, 4)):
        r = rng.uniform(0.06, 0.2) * unit
        x, y = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.6) * height
        box = (x - r, y - r, x + r, y + r)
        if rng.random() < 0.5:
            draw.ellipse(box, outline=(255, 255, 255, 150), width=line)
        else:
            draw.rounded_rectangle(box, radius=r / 3, outline=(255, 255, 255, 120), width=line)
    for _ in range(rng.randint(3, 6)):
        r = rng.uniform(0.006, 0.018) * unit
        x, y = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.65) * height
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 255, 200))

    _text_panel(draw, width, height, prompt, caption)
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def _text_panel(draw: ImageDraw.ImageDraw, width: int, height: int, prompt: str,
                caption: str) -> None:
    """The prompt (up to three lines) and a caption on a translucent panel, lower third."""
    unit = min(width, height)
    text = " ".join(prompt.split()) or "(empty prompt)"
    size = max(12, unit // 18)
    font = _font(size)
    max_chars = max(10, int(width * 0.8 / (size * 0.55)))
    lines = textwrap.wrap(text, width=max_chars)[:3]
    small_size = max(10, unit // 48)
    small = _font(small_size)
    line_h = size * 1.25
    pad = size * 0.6
    text_w = max([_text_width(draw, t, font) for t in lines] + [_text_width(draw, caption, small)])
    block_h = line_h * len(lines) + (small_size * 1.6 if caption else 0)
    panel_w = text_w + 2 * pad
    left = (width - panel_w) / 2
    top = height * 0.93 - block_h - 2 * pad
    draw.rounded_rectangle((left, top, left + panel_w, top + block_h + 2 * pad),
                           radius=pad, fill=(0, 0, 0, 110))
    ty = top + pad
    for t in lines:
        tx = (width - _text_width(draw, t, font)) / 2
        draw.text((tx, ty), t, font=font, fill=(255, 255, 255, 245))
        ty += line_h
    if caption:
        tx = (width - _text_width(draw, caption, small)) / 2
        draw.text((tx, ty + small_size * 0.3), caption, font=small, fill=(255, 255, 255, 170))


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=88)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=82, method=0)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


class ImageCache:
    """A small thread-safe LRU of encoded images; one render per key even under concurrency."""

    def __init__(self, max_items: int = 24, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple[object, ...], threading.Lock] = {}

    def get(self, seed: int, width: int, height: int, prompt: str, fmt: str,
            caption: str = "") -> bytes:
        if fmt not in _PIL_FORMATS:
            raise ValueError(f"unknown image format {fmt!r}")
        key: tuple[object, ...] = (seed, width, height, prompt, fmt, caption)
        with self._lock:
            data = self._lookup(key)
            if data is not None:
                return data
            key_lock = self._pending.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                data = self._lookup(key)
                if data is not None:
                    return data
            try:
                data = encode(render(seed, width, height, prompt, caption), fmt)
                with self._lock:
                    self._store(key, data)
            finally:
                with self._lock:
                    self._pending.pop(key, None)
            return data

    def _lookup(self, key: tuple[object, ...]) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def _store(self, key: tuple[object, ...], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        self._items[key] = data
        self._bytes += len(data)
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: The process-wide cache every simulator instance shares.
CACHE = ImageCache()
