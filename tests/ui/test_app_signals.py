"""SIGTERM (a logout, a service manager, ``kill``) and SIGINT (Ctrl+C in the terminal)
close the running app as its window's close button does: the layout is saved, the
engine stops in order, the process exits 0. The real app, in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCREEN = Path(__file__).parents[1] / "offscreen.json"  # the suite's desktop-sized screen


def _log(home: Path) -> str:
    try:
        return (home / "logs" / "nbdesk.log").read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_closes_the_app_in_order(tmp_path: Path, sig: signal.Signals) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "NBDESK_HOME": str(home),
           "QT_QPA_PLATFORM": f"offscreen:configfile={SCREEN}"}
    proc = subprocess.Popen([sys.executable, "-m", "nbdesk"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "started" not in _log(home):  # the engine is up: every step has run
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the app never logged its start"
            time.sleep(0.05)
        assert not (home / "window.ini").exists()
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert _log(home).rstrip().endswith("INFO nbdesk: stopped")
    assert (home / "window.ini").exists()  # the layout, saved as on a normal close
