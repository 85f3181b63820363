"""Desktop integration without a window: the launcher `nbdesk install-desktop` writes (into
a temporary XDG_DATA_HOME), its validation by the freedesktop tools, and image files on
the command line reaching the app."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nbdesk import cli, desktop
from tests.keychain import on_ci

ROOT = Path(__file__).resolve().parents[1]


def need_tool(name: str) -> str:
    """A validator from apt (.ci/run installs it): skipped locally when missing, a
    failure on CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt install desktop-file-utils appstream)"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def read_entry(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return parser["Desktop Entry"]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbdesk", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def data_home(tmp_path: Path) -> Path:
    return tmp_path / "share"


# ---------------------------------------------------------------------------- install-desktop


def test_install_desktop_writes_launcher_icons_and_metainfo(data_home: Path) -> None:
    command = ["/opt/nb desk/nbdesk"]  # a space: the Exec line must quote it
    done = desktop.install_desktop(env={"XDG_DATA_HOME": str(data_home)}, command=command,
                                   refresh=False)
    entry_path = data_home / "applications" / "nbdesk.desktop"
    assert entry_path in done.files and all(f.is_file() for f in done.files)

    entry = read_entry(entry_path)
    assert entry["Exec"] == '"/opt/nb desk/nbdesk" gui %F'
    assert shlex.split(entry["Exec"]) == ["/opt/nb desk/nbdesk", "gui", "%F"]
    assert entry["TryExec"] == '"/opt/nb desk/nbdesk"'
    assert entry["Icon"] == "nbdesk" and entry["Type"] == "Application"
    assert entry["Terminal"] == "false"
    assert entry["MimeType"].rstrip(";").split(";") == ["image/png", "image/jpeg", "image/webp"]
    assert entry["StartupWMClass"] == "nbdesk"  # matches QGuiApplication.desktopFileName

    for size in desktop.ICON_SIZES:
        icon = data_home / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "nbdesk.png"
        assert icon.read_bytes() == desktop.icon_png(size).read_bytes()
    svg = data_home / "icons" / "hicolor" / "scalable" / "apps" / "nbdesk.svg"
    assert svg.read_bytes() == desktop.icon_svg().read_bytes()
    metainfo = data_home / "metainfo" / "io.github.nbdesk.nbdesk.metainfo.xml"
    assert "<launchable type=\"desktop-id\">nbdesk.desktop</launchable>" in metainfo.read_text()

    removed = desktop.uninstall_desktop(env={"XDG_DATA_HOME": str(data_home)}, refresh=False)
    assert sorted(removed) == sorted(done.files)
    assert not any(f.exists() for f in done.files)


def test_exec_line_quoting_follows_the_desktop_entry_spec() -> None:
    assert desktop.exec_line(["/usr/bin/nbdesk"]) == "/usr/bin/nbdesk gui %F"
    assert desktop.exec_line(["/a b/python", "-m", "nbdesk"]) == '"/a b/python" -m nbdesk gui %F'
    # % is doubled; inside quotes " ` $ \ take a backslash, and every backslash is then
    # written twice (the string-level escape)
    assert desktop.exec_line(["/x/100%/nb"]) == "/x/100%%/nb gui %F"
    assert desktop.exec_line(['/x/$a"b']) == '"/x/\\\\$a\\\\"b" gui %F'


def test_installed_files_pass_the_freedesktop_validators(data_home: Path) -> None:
    validate = need_tool("desktop-file-validate")
    appstream = need_tool("appstreamcli")
    desktop.install_desktop(env={"XDG_DATA_HOME": str(data_home)},
                            command=["/opt/nbdesk/nbdesk"], refresh=False)
    entry = data_home / "applications" / "nbdesk.desktop"
    result = subprocess.run([validate, str(entry)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    metainfo = data_home / "metainfo" / "io.github.nbdesk.nbdesk.metainfo.xml"
    result = subprocess.run([appstream, "validate", "--no-net", str(metainfo)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_installs_for_the_current_user_and_points_at_this_nbdesk(data_home: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(data_home)}
    result = run_cli("install-desktop", env=env)
    assert result.returncode == 0, result.stderr
    entry = read_entry(data_home / "applications" / "nbdesk.desktop")
    program = shlex.split(entry["Exec"])[0]
    # this environment's own `nbdesk` script: the launcher runs the same installation
    assert program == str(Path(sys.executable).parent / "nbdesk")
    assert os.access(program, os.X_OK)
    assert shlex.split(entry["Exec"])[1:] == ["gui", "%F"]
    assert "installed the nbdesk launcher" in result.stdout

    result = run_cli("uninstall-desktop", env=env)
    assert result.returncode == 0, result.stderr
    assert not (data_home / "applications" / "nbdesk.desktop").exists()
    assert list(data_home.rglob("*.png")) == []


def test_the_launcher_is_found_as_a_handler_for_images(data_home: Path) -> None:
    """What a file manager asks: which applications open a PNG (mimeinfo.cache, written
    by update-desktop-database from the MimeType line)."""
    need_tool("update-desktop-database")
    done = desktop.install_desktop(env={"XDG_DATA_HOME": str(data_home)},
                                   command=["/opt/nbdesk/nbdesk"], refresh=True)
    assert "update-desktop-database" in done.refreshed
    cache = (data_home / "applications" / "mimeinfo.cache").read_text()
    for mime in desktop.MIME_TYPES:
        assert f"{mime}=nbdesk.desktop;" in cache


# ---------------------------------------------------------------------------- file arguments


def test_file_arguments_are_recognised(tmp_path: Path) -> None:
    image = tmp_path / "a photo.png"
    image.write_bytes(b"not checked here")
    assert desktop.local_path(str(image)) == image
    assert desktop.local_path("file:///tmp/a%20photo.png") == Path("/tmp/a photo.png")
    assert desktop.local_path("file://otherhost/x.png") is None
    assert desktop.local_path("https://example.com/x.png") is None
    assert desktop.looks_like_files([str(image)])
    assert desktop.looks_like_files(["file:///tmp/a%20photo.png"])
    # a typo of a command is still a usage error, not a file to open
    assert not desktop.looks_like_files(["generat", "a prompt"])
    assert not desktop.looks_like_files(["--verbose"])
    assert not desktop.looks_like_files([])


def test_cli_hands_image_files_to_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbdesk.app

    calls: list[dict[str, Any]] = []

    def fake_main(argv: Sequence[str], files: Sequence[str] = ()) -> int:
        calls.append({"argv": list(argv), "files": list(files)})
        return 0

    monkeypatch.setattr(nbdesk.app, "main", fake_main)
    image = tmp_path / "ref.png"
    image.write_bytes(b"x")
    assert cli.run(["gui", str(image), "file:///tmp/b.webp"]) == 0
    assert cli.run([str(image)]) == 0  # how Windows' "Open with" calls the app
    assert cli.run([]) == 0
    assert [c["files"] for c in calls] == [
        [str(image), "file:///tmp/b.webp"], [str(image)], []]
    with pytest.raises(SystemExit) as exc:
        cli.run(["generat", "a prompt"])
    assert exc.value.code == cli.EXIT_BAD_INPUT
