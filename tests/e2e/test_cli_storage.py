"""The real ``nbdesk`` command and its storage: what it creates is private to the user,
a locked or read-only database is explained in one line (quickly), never a traceback."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from nbdesk.core.library import OPEN_BUSY_TIMEOUT
from tests.core.test_library_safety import hold_lock, release
from tests.e2e.harness import REPO, Cli, Result

MakeCli = Callable[..., Cli]


def run(env: dict[str, str], *args: str, wrap: Sequence[str] = ()) -> Result:
    done = subprocess.run([*wrap, sys.executable, "-m", "nbdesk", *args], env=env, cwd=REPO,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
                          check=False)
    return Result(done.returncode, done.stdout.decode("utf-8", "replace"),
                  done.stderr.decode("utf-8", "replace"))


def one_line(result: Result) -> str:
    lines = result.stderr_lines()
    assert len(lines) == 1, result.describe()
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[0]


def modes_under(home: Path) -> dict[str, str]:
    """Every file and folder under ``home`` with a mode that is not owner-only."""
    wrong: dict[str, str] = {}
    for path in home.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[str(path.relative_to(home))] = oct(mode)
    return wrong


def test_a_fresh_home_is_private_to_the_user(make_cli: MakeCli, tmp_path: Path) -> None:
    env = dict(make_cli(None, keys={}).env)
    home = tmp_path / "fresh" / "nbdesk-home"  # nbdesk makes it, and its parent
    env["NBDESK_HOME"] = str(home)

    gen = run(env, "generate", "a private picture", "--provider", "demo", "--json")

    assert gen.code == 0, gen.describe()
    [rec] = gen.records()
    [image] = (Path(p) for p in rec["images"])
    made = {p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file()}
    assert {"library.sqlite3", "logs/nbdesk.log",
            image.relative_to(home).as_posix()} <= made, made
    assert modes_under(home) == {}
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.parent.stat().st_mode) == 0o700


def test_an_existing_shared_home_gets_private_files(make_cli: MakeCli, tmp_path: Path) -> None:
    env = dict(make_cli(None, keys={}).env)
    home = tmp_path / "shared-home"
    home.mkdir()
    home.chmod(0o755)
    env["NBDESK_HOME"] = str(home)

    gen = run(env, "generate", "a private picture", "--provider", "demo")

    assert gen.code == 0, gen.describe()
    assert any(home.glob("images/*/*/*.*"))
    assert modes_under(home) == {}
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # the user's folder: theirs to set


def test_a_locked_library_fails_fast_and_says_who_holds_it(make_cli: MakeCli) -> None:
    cli = make_cli(None, keys={})
    holder = hold_lock(cli.library.paths.db)
    try:
        started = time.monotonic()
        gen = cli.run("generate", "a red bicycle", "--provider", "demo")
        elapsed = time.monotonic() - started
    finally:
        release(holder)

    assert gen.code == 3, gen.describe()
    line = one_line(gen)
    assert "locked by another program (python" in line
    assert f"pid {holder.pid}" in line and "close it, then try again" in line
    assert "damaged" not in line and "backup" in line  # ("a backup tool ..., say")
    # the old wait was 15 s per statement (24 s seen); the start of Python is counted here
    assert elapsed < OPEN_BUSY_TIMEOUT + 7, elapsed
    assert cli.jobs() == []  # nothing was queued, nothing paid


def _read_only_wrapper(home: Path) -> list[str]:
    """As root (file modes do not stop root) the run gets a read-only bind mount of the
    home in a mount namespace of its own; otherwise the folder and files lose their
    write permission."""
    if os.geteuid() != 0:
        for path in home.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        home.chmod(0o555)
        return []
    unshare = shutil.which("unshare")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    if unshare is None:
        pytest.skip("running as root without unshare: no way to make the folder read-only")
    probe = subprocess.run([unshare, "-m", "sh", "-c", script, str(home), "true"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"running as root and a read-only mount is not allowed here: "
                    f"{probe.stderr.decode(errors='replace').strip()}")
    return [unshare, "-m", "sh", "-c", script, str(home)]


def test_a_read_only_library_says_read_only_not_damaged(make_cli: MakeCli) -> None:
    cli = make_cli(None, keys={})
    assert cli.run("generate", "before", "--provider", "demo").code == 0
    cli.library.close()
    home = cli.home
    wrap = _read_only_wrapper(home)
    try:
        gen = run(cli.env, "generate", "a red bicycle", "--provider", "demo", wrap=wrap)
    finally:
        home.chmod(0o700)
        for path in home.rglob("*"):
            path.chmod(0o700 if path.is_dir() else 0o600)

    assert gen.code == 3, gen.describe()
    line = one_line(gen)
    assert "the library database is read-only" in line, line
    assert "check the folder's permissions" in line
    assert "damaged" not in line and "backup" not in line


ENTRY = """
import atexit, os, sys
os.umask(0o022)  # a usual login umask
atexit.register(lambda: print("umask", oct(os.umask(0o022))))
from nbdesk.launcher import entry
entry(sys.argv[1:])
"""


def test_the_entry_point_makes_everything_after_it_private(
    make_cli: MakeCli, tmp_path: Path
) -> None:
    """``nbdesk.launcher.entry`` (the script, ``python -m nbdesk``, main.py) sets the
    process's umask first: files made by any part of nbdesk (thumbnails, the window's
    layout, the composer's history) are private without each saying so."""
    env = dict(make_cli(None, keys={}).env)
    env["NBDESK_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", ENTRY, "jobs"], env=env, cwd=REPO,
                          capture_output=True, timeout=60, check=False, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "umask 0o77", done.stdout
