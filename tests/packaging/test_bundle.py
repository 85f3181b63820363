"""Smoke test of the built app (PyInstaller, one folder), run as a user's desktop runs it:

    uv run --group packaging python packaging/build.py
    uv run --group packaging pytest tests/packaging --bundle dist/nbdesk

Left out of a plain ``pytest`` run (it needs the build). The binary starts offscreen with a
bare environment (no Python, venv or uv on it), on a fresh NBDESK_HOME, inside a private
D-Bus session with gnome-keyring (``secret_service``: never the user's keychain). It opens
an image given on its command line as a reference, generates one Demo image with it, finds
it in the library and quits with exit code 0 (``NBDESK_SMOKE``, see nbdesk/ui/smoke.py).
Also: the key stored by the frozen CLI is read from the keychain, no module is loaded
from outside the bundle, nothing is written into the bundle or the working folder, the
app's own files land in the platform's user folders, its launcher points at the bundle.
The bundle's size and its start-up time next to ``uv run nbdesk`` go to the summary.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.keychain import SecretServiceEnv
from tests.packaging.conftest import SUMMARY

pytestmark = pytest.mark.bundle

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_ENV = dict(os.environ)  # before fixtures point HOME elsewhere (uv needs its cache)
SIZE_TARGET = 150 * 2**20  # bytes: "under 150 MB" (as du -h counts)
APP_TIMEOUT = 240  # s; the Demo image alone takes ~5 s, start-up a few on a busy machine
KEY = "smoke-test-key-0123456789"

sys.path.insert(0, str(ROOT / "packaging"))
from build import disk_usage  # noqa: E402  (packaging/build.py)


@pytest.fixture(scope="module")
def bundle(request: pytest.FixtureRequest) -> Path:
    path = Path(request.config.getoption("--bundle")).resolve()
    if not path.is_dir():
        pytest.fail(f"--bundle {path}: no such folder (build it with packaging/build.py)")
    return path


@pytest.fixture(scope="module")
def exe(bundle: Path) -> Path:
    for candidate in (bundle / "nbdesk", bundle / "nbdesk.exe",
                      bundle / "Contents" / "MacOS" / "nbdesk"):
        if candidate.is_file():
            return candidate
    pytest.fail(f"no nbdesk executable in {bundle}")


def desktop_env(**extra: str) -> dict[str, str]:
    """What a desktop session gives an app it launches: no Python, venv or uv paths."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "QT_QPA_PLATFORM": "offscreen"}
    for name in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                 "XDG_CACHE_HOME", "XDG_STATE_HOME", "DBUS_SESSION_BUS_ADDRESS"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.update(extra)
    return env


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def run_app(cmd: list[str], env: dict[str, str], cwd: Path, report: Path,
            ) -> tuple[int, dict[str, Any], float, str]:
    """Run the app to its end: exit code, its smoke report, seconds from spawn to the
    window shown, and what it wrote on stderr."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=APP_TIMEOUT, check=False)
    assert report.is_file(), f"no smoke report (exit {proc.returncode}): {proc.stderr[-3000:]}"
    data = json.loads(report.read_text(encoding="utf-8"))
    return proc.returncode, data, data["shown_mono"] - t0, proc.stderr


def test_size_on_disk(bundle: Path) -> None:
    size = disk_usage(bundle)
    SUMMARY.append(("bundle size on disk",
                    f"{size / 1e6:.1f} MB = {size / 2**20:.1f} MiB ({bundle})"))
    assert size < SIZE_TARGET, f"{size / 2**20:.1f} MiB"
    # nothing the app does not use (the spec's excludes, the QtGui hook's plugin filter)
    names = {p.name for p in bundle.rglob("*")}
    for unwanted in ("libQt6WebEngineCore.so.6", "libQt6Qml.so.6", "libQt6Quick.so.6",
                     "libQt6Pdf.so.6", "libqpdf.so", "libqgtk3.so", "libgtk-3.so.0",
                     "_tkinter.cpython-311-x86_64-linux-gnu.so"):
        assert unwanted not in names
    plugins = {p.relative_to(p.parents[1]).as_posix()
               for p in bundle.rglob("plugins/*/*") if p.is_file()}
    for wanted in ("platforms/libqxcb.so", "platforms/libqoffscreen.so",
                   "platforms/libqwayland.so", "imageformats/libqwebp.so",
                   "imageformats/libqjpeg.so", "platformthemes/libqxdgdesktopportal.so"):
        assert wanted in plugins


def test_demo_image_with_the_keychain_and_a_reference(
    exe: Path, bundle: Path, secret_service: SecretServiceEnv, tmp_path: Path
) -> None:
    home = tmp_path / "nbdesk-home"  # a fresh NBDESK_HOME
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    ref = tmp_path / "in" / "holiday photo.webp"
    ref.parent.mkdir()
    Image.new("RGB", (320, 200), (40, 160, 90)).save(ref, "WEBP")
    env = desktop_env(NBDESK_HOME=str(home))

    # the frozen CLI stores a key in the keychain: keyring's backends are in the bundle
    stored = subprocess.run([str(exe), "keys", "set", "apiframe"], input=KEY + "\n",
                            env=env, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0, stored.stderr
    assert "Secret Service" in stored.stdout

    before_bundle = snapshot(bundle)
    before_home = snapshot(secret_service.home)
    report = tmp_path / "report.json"
    code, data, startup, stderr = run_app(
        [str(exe), str(ref)], {**env, "NBDESK_SMOKE": str(report)}, workdir, report)
    assert code == 0, stderr[-3000:]
    assert data["ok"], data.get("error")
    assert data["frozen"] and data["platform"] == "offscreen"
    assert data["opened"] == {"viewer": [], "references": [str(ref)], "missing": []}
    assert data["tray"] == [str(ref)]
    item = data["item"]
    assert data["in_library"] and item["demo"] and item["refs"] == 1
    assert Path(item["path"]).is_file() and Path(item["path"]).is_relative_to(home)
    assert data["keychain"].startswith("Secret Service")
    assert data["keys"] == {"apiframe": "keychain", "apifree": "none", "gemini": "none"}
    assert data["modules_outside_bundle"] == []
    assert {"jpeg", "png", "webp", "gif"} <= set(data["image_formats"])
    assert data["png_crc32"] == "isal.isal_zlib"  # the fast CRC is in the bundle
    assert KEY not in stderr

    # the frozen CLI sees the same library
    jobs = subprocess.run([str(exe), "jobs", "--json"], env=env, cwd=workdir,
                          capture_output=True, text=True, timeout=60)
    assert jobs.returncode == 0, jobs.stderr
    (job,) = [json.loads(line) for line in jobs.stdout.splitlines()]
    assert job["status"] == "completed" and job["images"] == [item["path"]]

    # it wrote nothing into the bundle, the working folder, or the home folder
    # (NBDESK_HOME is elsewhere), apart from the keychain's own files and caches
    assert snapshot(bundle) == before_bundle
    assert list(workdir.iterdir()) == []
    new = set(snapshot(secret_service.home)) - set(before_home)
    assert {p for p in new if not p.startswith((".local/share/keyrings/", ".cache/"))} == set()
    SUMMARY.append(("first Demo image (bundle)",
                    f"{data['image_s']:.1f} s after queueing; window shown "
                    f"{startup:.2f} s after spawn"))


def test_user_folders_start_up_time_and_launcher(exe: Path, tmp_path: Path) -> None:
    """Without NBDESK_HOME the app uses the platform's user folders and nothing else;
    start-up (spawn to window shown) of the bundle next to `uv run nbdesk`; and the
    launcher it installs runs the bundle."""
    home = tmp_path / "home"
    home.mkdir()
    report = tmp_path / "start.json"
    env = desktop_env(HOME=str(home), NBDESK_SMOKE=str(report), NBDESK_SMOKE_SCENARIO="start")
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        env.pop(name, None)
    code, data, _startup, stderr = run_app([str(exe)], env, tmp_path, report)
    assert code == 0 and data["ok"], stderr[-3000:]
    written = set(snapshot(home))
    assert ".local/share/nbdesk/library.sqlite3" in written
    assert ".local/state/nbdesk/log/nbdesk.log" in written
    outside = {p for p in written
               if not p.startswith((".local/share/nbdesk/", ".config/nbdesk/",
                                    ".local/state/nbdesk/", ".cache/"))}
    assert outside == set()

    # start-up: alternate bundle and `uv run nbdesk`, each on a fresh NBDESK_HOME
    uv = shutil.which("uv", path=ORIGINAL_ENV.get("PATH"))
    times: dict[str, list[float]] = {"bundle": [], "uv run nbdesk": []}
    for i in range(3):
        for kind in times:
            out = tmp_path / f"t-{kind[:2]}-{i}.json"
            extra = {"NBDESK_HOME": str(tmp_path / f"h-{kind[:2]}-{i}"),
                     "NBDESK_SMOKE": str(out), "NBDESK_SMOKE_SCENARIO": "start",
                     "QT_QPA_PLATFORM": "offscreen"}
            if kind == "bundle":
                cmd, run_env, cwd = [str(exe)], desktop_env(**extra), tmp_path
            else:
                if uv is None:
                    continue
                cmd, run_env, cwd = [uv, "run", "nbdesk"], {**ORIGINAL_ENV, **extra}, ROOT
            code, data, startup, stderr = run_app(cmd, run_env, cwd, out)
            assert code == 0 and data["ok"], stderr[-3000:]
            times[kind].append(startup)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    for kind, values in times.items():
        if values:
            SUMMARY.append((f"start-up, {kind}",
                            f"median {statistics.median(values):.2f} s "
                            f"({', '.join(f'{v:.2f}' for v in values)}; spawn to window shown)"))
    SUMMARY.append(("load average", " ".join(load)))

    # the launcher the bundle installs runs the bundle, and passes validation
    data_home = tmp_path / "share"
    installed = subprocess.run([str(exe), "install-desktop"],
                               env=desktop_env(HOME=str(home), XDG_DATA_HOME=str(data_home)),
                               capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    entry = data_home / "applications" / "nbdesk.desktop"
    exec_line = next(line for line in entry.read_text().splitlines()
                     if line.startswith("Exec="))
    assert shlex.split(exec_line[len("Exec="):]) == [str(exe.resolve()), "gui", "%F"]
    assert (data_home / "icons" / "hicolor" / "256x256" / "apps" / "nbdesk.png").is_file()
    validate = shutil.which("desktop-file-validate")
    if validate:
        result = subprocess.run([validate, str(entry)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
