"""The app icon: every PNG size there, square, transparent around a rounded tile, up to
date with the SVG; the .ico and .icns the build writes hold every size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from nbdesk import desktop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))
import icons  # noqa: E402  (packaging/icons.py)

SIZES = desktop.ICON_SIZES


def test_sizes_agree() -> None:
    assert tuple(icons.SIZES) == SIZES == (16, 24, 32, 48, 64, 128, 256, 512)


@pytest.mark.parametrize("size", SIZES)
def test_png_is_a_square_rgba_tile(size: int) -> None:
    path = desktop.icon_png(size)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (size, size) and im.mode == "RGBA"
        alpha = im.getchannel("A")
        # rounded corners: the corner pixel is see-through, the middle opaque
        assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((size - 1, size - 1)) == 0
        assert alpha.getpixel((size // 2, size // 2)) == 255
        # it has a drawing on it, not one flat colour: banana yellow and spark white
        rgb = im.convert("RGB")
        colours = {rgb.getpixel((x, y)) for x in range(size) for y in range(size)
                   if alpha.getpixel((x, y)) == 255}
        assert any(r > 200 and g > 150 and b < 120 for r, g, b in colours), "no yellow"
        assert any(min(c) > 230 for c in colours), "no white spark"


def test_pngs_are_rendered_from_the_current_svg(qapp: object, tmp_path: Path) -> None:
    """Re-render the SVG: the committed PNGs must match (run packaging/icons.py after
    editing resources/nbdesk.svg). (``qapp``: pytest-qt's application, which the
    renderer then uses, rather than making a QGuiApplication the window tests can't use.)"""
    fresh = icons.render_pngs(out_dir=tmp_path, sizes=(16, 64, 256))
    for path in fresh:
        with Image.open(path) as new, Image.open(desktop.icon_png(new.width)) as old:
            diff = ImageStat.Stat(ImageChops.difference(new.convert("RGBA"),
                                                        old.convert("RGBA")))
            assert max(diff.mean) < 1.0, f"{path.name} differs from the committed PNG"


def test_ico_and_icns_hold_every_size(qapp: object, tmp_path: Path) -> None:
    ico = icons.write_ico(tmp_path / "nbdesk.ico")
    with Image.open(ico) as im:
        assert im.format == "ICO"
        assert set(im.info["sizes"]) == {(s, s) for s in icons.ICO_SIZES}
    icns = icons.write_icns(tmp_path / "nbdesk.icns")
    with Image.open(icns) as im:
        assert im.format == "ICNS"
        got = {(w * scale, h * scale) for w, h, scale in im.info["sizes"]}
        assert got == {(s, s) for s in icons.ICNS_SIZES}
        im.size = (1024, 1024)  # type: ignore[misc]  # pick the largest and decode it
        im.load()
        assert im.size == (1024, 1024)
        assert im.getchannel("A").getpixel((512, 512)) == 255
