"""The real app, twice on one library (offscreen, Demo, no key): the second launch hands
its image to the running window and exits 0 at once, without opening a window or an
engine; the first puts the image in its reference tray. A window killed without closing
leaves its socket behind: the next launch starts a window all the same."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.ui.test_app_signals import SCREEN, _log

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")



def _wait_for(proc: subprocess.Popen[str], home: Path, text: str, count: int = 1) -> None:
    """Until the app's log holds ``text`` ``count`` times (polled: another process)."""
    deadline = time.monotonic() + 60
    while _log(home).count(text) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{_log(home)}"
        time.sleep(0.05)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    environ = {**os.environ, "NBDESK_HOME": str(tmp_path / "home"),
               "XDG_RUNTIME_DIR": str(run),
               "QT_QPA_PLATFORM": f"offscreen:configfile={SCREEN}"}
    for key in [k for k in environ if k.startswith("NBDESK_") and k.endswith("_API_KEY")]:
        del environ[key]  # a new user: Demo only
    return environ


@pytest.fixture
def window(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "nbdesk"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # (and its pipes closed)


def test_a_second_launch_hands_its_image_to_the_running_window(
    window: subprocess.Popen[str], env: dict[str, str], tmp_path: Path
) -> None:
    home = Path(env["NBDESK_HOME"])
    _wait_for(window, home, "started: library")  # every step has run
    photo = tmp_path / "holiday photo.png"
    Image.new("RGB", (96, 64), "teal").save(photo)

    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "nbdesk", str(photo)], env=env,
                            capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert second.returncode == 0, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        "nbdesk is already open for this library; the files were handed to it")
    assert took < 10, took  # (a bare interpreter with Qt: well under a second here)
    # the running window took it: in its tray, ready for a prompt
    _wait_for(window, home, "files from another launch")
    assert ("files from another launch: 0 in the viewer, 1 offered to the tray "
            "(1 there now), 0 not files") in _log(home)
    # the second launch started nothing: one start, one engine, in the log
    assert _log(home).count("started: library") == 1

    # the window closes in order, and its socket goes with it
    run = Path(env["XDG_RUNTIME_DIR"]) / "nbdesk"
    assert [p.suffix for p in run.iterdir()] == [".sock"]
    window.send_signal(signal.SIGTERM)
    _out, err = window.communicate(timeout=60)
    assert window.returncode == 0, err
    assert list(run.iterdir()) == []


def test_a_window_killed_without_closing_does_not_block_the_next(
    window: subprocess.Popen[str], env: dict[str, str]
) -> None:
    home = Path(env["NBDESK_HOME"])
    _wait_for(window, home, "started: library")
    window.kill()  # its socket file stays behind
    window.communicate()
    run = Path(env["XDG_RUNTIME_DIR"]) / "nbdesk"
    assert [p.suffix for p in run.iterdir()] == [".sock"]

    again = subprocess.Popen([sys.executable, "-m", "nbdesk"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(again, home, "started: library", count=2)  # a window again
        again.send_signal(signal.SIGTERM)
        _out, err = again.communicate(timeout=60)
    finally:
        if again.poll() is None:
            again.kill()
            again.communicate()
    assert again.returncode == 0, err
    assert "already open" not in err
