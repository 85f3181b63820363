"""The app icon in every size, from its one source, ``resources/nbdesk.svg``.

    uv run python packaging/icons.py            # re-render resources/icons/*.png

The PNGs (16-512 px) are committed: the window, the taskbar and ``nbdesk install-desktop``
use them straight from the source tree. ``packaging/build.py`` also calls
``write_ico``/``write_icns`` for the Windows and macOS bundles (Pillow writes both).
Rendering uses Qt's own SVG renderer (QtSvg, part of PySide6-Essentials), offscreen.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVG = ROOT / "resources" / "nbdesk.svg"
PNG_DIR = ROOT / "resources" / "icons"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # the ICO format stops at 256
ICNS_SIZES = (32, 64, 128, 256, 512, 1024)  # what Pillow's ICNS writer stores


def png_name(size: int) -> str:
    return f"nbdesk-{size}.png"


def render_pngs(svg: Path = SVG, out_dir: Path = PNG_DIR,
                sizes: Iterable[int] = SIZES) -> list[Path]:
    """Render ``svg`` to ``out_dir/nbdesk-<size>.png`` for each size; the paths written."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([sys.argv[0]])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg}: not a valid SVG")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        renderer.render(painter)
        painter.end()
        path = out_dir / png_name(size)
        if not image.convertToFormat(QImage.Format.Format_ARGB32).save(str(path)):
            raise OSError(f"cannot write {path}")
        written.append(path)
    return written


def _images(png_dir: Path, sizes: Sequence[int], extra_dir: Path | None = None) -> list[object]:
    from PIL import Image

    images = []
    for size in sizes:
        path = png_dir / png_name(size)
        if not path.is_file() and extra_dir is not None:
            path = extra_dir / png_name(size)
        with Image.open(path) as im:
            images.append(im.convert("RGBA"))
    return images


def write_ico(out: Path, png_dir: Path = PNG_DIR) -> Path:
    """A Windows .ico holding every size up to 256 px, each from its own rendering."""
    from PIL import Image

    images = _images(png_dir, ICO_SIZES)
    biggest = images[-1]
    assert isinstance(biggest, Image.Image)
    out.parent.mkdir(parents=True, exist_ok=True)
    biggest.save(out, format="ICO", sizes=[(s, s) for s in ICO_SIZES],
                 append_images=images[:-1])
    return out


def write_icns(out: Path, png_dir: Path = PNG_DIR) -> Path:
    """A macOS .icns (32-1024 px: 16-512 at 1x and 2x; the 1024 is rendered for it)."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    render_pngs(out_dir=out.parent, sizes=[s for s in ICNS_SIZES if s not in SIZES])
    images = _images(png_dir, ICNS_SIZES, extra_dir=out.parent)
    biggest = images[-1]
    assert isinstance(biggest, Image.Image)
    out.parent.mkdir(parents=True, exist_ok=True)
    biggest.save(out, format="ICNS", append_images=images[:-1])
    return out


if __name__ == "__main__":
    for p in render_pngs():
        print(p.relative_to(ROOT))
