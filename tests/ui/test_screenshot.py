"""The main window rendered in a real X server (Xvfb) with a populated library and a
running queue. The picture in README.md (docs/screenshot.png) comes from this script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat

ROOT = Path(__file__).resolve().parents[2]


def test_main_window_screenshot_under_xvfb(tmp_path: Path) -> None:
    if shutil.which("xvfb-run") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("xvfb-run is missing (CI installs the xvfb package)")
        pytest.skip("xvfb-run is not installed")
    out = tmp_path / "screenshot.png"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env["QT_QPA_PLATFORM"] = "xcb"
    result = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24",
         sys.executable, "-m", "tests.ui.screenshot_app", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with Image.open(out) as shot:
        assert shot.size == (1440, 900)
        stats = ImageStat.Stat(shot.convert("L"))
        assert stats.stddev[0] > 20  # a rendered window, not a blank frame
        # the library grid (lower right) holds thumbnails: many distinct colours there
        grid = shot.crop((560, 540, 1400, 860)).convert("RGB")
        assert len(grid.getcolors(maxcolors=1 << 20) or []) > 500
