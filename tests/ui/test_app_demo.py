"""The window's composition root gives Demo: ``core`` knows no simulator (an import-linter
contract), so the app itself must hand it one. A new user's first image (no key, the Demo
provider), acted out by the app's own smoke hook (nbdesk/ui/smoke.py), in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCREEN = Path(__file__).parents[1] / "offscreen.json"  # the suite's desktop-sized screen
_SCRUBBED_PREFIXES = ("NBDESK_", "XDG_", "PYTHON_KEYRING", "GNOME_KEYRING", "KEYRING_")


def test_the_app_makes_a_demo_image_with_no_key(tmp_path: Path) -> None:
    home, report = tmp_path / "home", tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SCRUBBED_PREFIXES) and k != "DBUS_SESSION_BUS_ADDRESS"}
    env.update(NBDESK_HOME=str(home), NBDESK_SMOKE=str(report),
               DBUS_SESSION_BUS_ADDRESS="unix:path=/nonexistent",  # no keychain: no key
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"),
               QT_QPA_PLATFORM=f"offscreen:configfile={SCREEN}")
    result = subprocess.run([sys.executable, "-m", "nbdesk"], env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["ok"], data.get("error")
    item = data["item"]
    assert data["in_library"] and item["demo"]
    assert Path(item["path"]).is_file() and Path(item["path"]).is_relative_to(home)
