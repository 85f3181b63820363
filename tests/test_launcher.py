"""The process's entry point: the desktop app directly, every other command line to the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbdesk.launcher import gui_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("argv", "files"), [
    ([], []),
    (["gui"], []),
    (["gui", "a.png", "b.jpg"], ["a.png", "b.jpg"]),
    (["file:///tmp/x.png"], ["file:///tmp/x.png"]),
    (["gui", "-v"], None),
    (["gui", "--help"], None),
    (["--help"], None),
    (["-v", "gui"], None),
    (["generate", "a cat"], None),
    (["search", "cat"], None),
    (["no-such-file.png"], None),  # not a file: the CLI says what is wrong
])
def test_which_command_lines_open_the_app(argv: list[str], files: list[str] | None) -> None:
    assert gui_files(argv) == files


def test_an_existing_file_opens_the_app(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert gui_files([str(image)]) == [str(image)]


def test_other_command_lines_reach_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "NBDESK_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen"}
    helped = subprocess.run([sys.executable, "-m", "nbdesk", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "usage: nbdesk" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", "nbdesk", "no-such-command"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("nbdesk: ")
    searched = subprocess.run([sys.executable, "-m", "nbdesk", "search", "cat"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert searched.returncode == 0, searched.stderr
