from __future__ import annotations

import dataclasses
import os
import stat
import sys
from pathlib import Path

import platformdirs
import pytest

from nbdesk.core.paths import Paths


def test_nbdesk_home_holds_everything(tmp_path: Path) -> None:
    p = Paths.resolve({"NBDESK_HOME": str(tmp_path / "h")})
    root = tmp_path / "h"
    assert p.root == root
    assert p.db == root / "library.sqlite3"
    assert p.images == root / "images"
    assert p.refs == root / "refs"
    assert p.thumbnails == root / "thumbnails"
    assert p.trash == root / "trash"
    assert p.tmp == root / "tmp"
    assert p.settings_file == root / "settings.json"
    assert p.log_dir == root / "logs"


def test_nbdesk_home_wins_over_library_dir(tmp_path: Path) -> None:
    p = Paths.resolve({"NBDESK_HOME": str(tmp_path / "h")}, library_dir=tmp_path / "lib")
    assert p.root == tmp_path / "h"
    assert p.db == tmp_path / "h" / "library.sqlite3"


@pytest.fixture(autouse=True)
def _private_platform_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """platformdirs reads HOME and the XDG variables itself: keep them inside tmp_path so
    that no test touches the real user folders."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("NBDESK_HOME", raising=False)


def test_platform_dirs_without_nbdesk_home(tmp_path: Path) -> None:
    p = Paths.resolve({})
    data = Path(platformdirs.user_data_dir("nbdesk", appauthor=False))
    assert p.root == data
    assert p.db == data / "library.sqlite3"
    assert p.images == data / "images"
    assert (
        p.settings_file
        == Path(platformdirs.user_config_dir("nbdesk", appauthor=False)) / "settings.json"
    )
    assert p.log_dir == Path(platformdirs.user_log_dir("nbdesk", appauthor=False))
    if sys.platform.startswith("linux"):
        assert p.root == tmp_path / "xdg-data" / "nbdesk"
        assert p.settings_file == tmp_path / "xdg-config" / "nbdesk" / "settings.json"
        assert p.log_dir.is_relative_to(tmp_path / "xdg-state" / "nbdesk")


@pytest.mark.parametrize("home", ["set", "empty", "relative"])
def test_without_a_usable_home_variable_the_accounts_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: str
) -> None:
    """HOME empty or relative (and no XDG variables): the account's home folder, as
    platformdirs has it, never the root or the current folder."""
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var)
    if home != "set":
        monkeypatch.setenv("HOME", "" if home == "empty" else "rel/home")
    monkeypatch.chdir(tmp_path)
    p = Paths.resolve({})
    assert p.root == Path(platformdirs.user_data_dir("nbdesk", appauthor=False))
    assert p.settings_file.parent == Path(platformdirs.user_config_dir("nbdesk", appauthor=False))
    assert p.log_dir == Path(platformdirs.user_log_dir("nbdesk", appauthor=False))
    assert p.root.is_absolute() and p.settings_file.is_absolute() and p.log_dir.is_absolute()
    if home != "set" and sys.platform.startswith("linux"):
        import pwd

        account = Path(pwd.getpwuid(os.getuid()).pw_dir)
        assert p.root == account / ".local" / "share" / "nbdesk"


@pytest.mark.parametrize("xdg", ["unset", "empty", "relative"])
def test_the_same_folders_as_platformdirs_without_xdg_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: str
) -> None:
    """On Linux the folders are worked out here (without importing platformdirs): with
    the XDG variables unset, empty or relative (ignored), the home's defaults."""
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        if xdg == "unset":
            monkeypatch.delenv(var)
        else:
            monkeypatch.setenv(var, "" if xdg == "empty" else "rel/dir")
    p = Paths.resolve({})
    assert p.root == Path(platformdirs.user_data_dir("nbdesk", appauthor=False))
    assert p.settings_file.parent == Path(platformdirs.user_config_dir("nbdesk", appauthor=False))
    assert p.log_dir == Path(platformdirs.user_log_dir("nbdesk", appauthor=False))
    if sys.platform.startswith("linux"):
        assert p.root == tmp_path / "home" / ".local" / "share" / "nbdesk"


def test_empty_nbdesk_home_is_ignored(tmp_path: Path) -> None:
    assert Paths.resolve({"NBDESK_HOME": "  "}).root == Paths.resolve({}).root


def test_library_dir_moves_only_the_library(tmp_path: Path) -> None:
    default = Paths.resolve({})
    p = Paths.resolve({}, library_dir=tmp_path / "lib")
    assert p.root == tmp_path / "lib"
    assert p.db == tmp_path / "lib" / "library.sqlite3"
    assert p.trash == tmp_path / "lib" / "trash"
    assert p.settings_file == default.settings_file
    assert p.log_dir == default.log_dir


def test_tilde_and_relative_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Paths.resolve({"NBDESK_HOME": "~/nb"}).root == tmp_path / "nb"
    monkeypatch.chdir(tmp_path)
    assert Paths.resolve({}, library_dir=Path("rel")).root == tmp_path / "rel"


def test_resolve_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBDESK_HOME", str(tmp_path))
    assert Paths.resolve().settings_file == tmp_path / "settings.json"


def test_paths_is_frozen(tmp_path: Path) -> None:
    p = Paths.resolve({"NBDESK_HOME": str(tmp_path)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.root = tmp_path  # type: ignore[misc]


def test_ensure_creates_folders_private_root(tmp_path: Path) -> None:
    p = Paths.resolve({"NBDESK_HOME": str(tmp_path / "a" / "h")})
    p.ensure()
    for folder in (
        p.root,
        p.images,
        p.refs,
        p.thumbnails,
        p.trash,
        p.tmp,
        p.log_dir,
        p.settings_file.parent,
    ):
        assert folder.is_dir(), folder
    assert stat.S_IMODE(p.root.stat().st_mode) == 0o700
    assert not p.db.exists()  # the library creates its database, not ensure()
    p.ensure()  # idempotent


def test_ensure_keeps_an_existing_root_mode(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    Paths.resolve({}, library_dir=root).ensure()
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert (root / "images").is_dir()


def test_write_synced_leaves_the_file_whole_or_absent(tmp_path: Path) -> None:
    from nbdesk.core.paths import fsync_dir, write_synced

    dest = tmp_path / "a.png"
    write_synced(dest, b"abc")
    assert dest.read_bytes() == b"abc"
    assert not (tmp_path / "a.part").exists()
    fsync_dir(tmp_path)  # a folder can be synced; a missing one is no error either
    fsync_dir(tmp_path / "missing")
    # A destination that cannot be written (its folder is gone): OSError, no .part left.
    gone = tmp_path / "gone" / "b.png"
    with pytest.raises(OSError):
        write_synced(gone, b"abc")
    assert not gone.with_suffix(".part").exists()
