"""Where nbdesk keeps its files.

One frozen value, resolved once at start-up and passed to whoever needs a path:

* ``NBDESK_HOME`` set (and not empty): everything lives under it — the library, the
  settings file (``settings.json``) and the logs (``logs/``). Tests and portable installs
  use this.
* otherwise the platform's conventions: the library in the user data folder, the
  settings file in the user config folder, the logs in the user log folder (the XDG base
  directories on Linux, read here; platformdirs elsewhere).
  The ``library_dir`` setting, when given, moves only the library (database, images,
  references, thumbnails, trash, tmp); the settings file and the logs stay put.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "nbdesk"
ENV_HOME = "NBDESK_HOME"
SETTINGS_NAME = "settings.json"
DB_NAME = "library.sqlite3"


@dataclass(frozen=True)
class Paths:
    root: Path
    db: Path
    images: Path
    refs: Path
    thumbnails: Path
    trash: Path
    tmp: Path
    settings_file: Path
    log_dir: Path

    @classmethod
    def for_root(cls, root: Path, *, settings_file: Path, log_dir: Path) -> Paths:
        """The layout of a library rooted at ``root``."""
        return cls(
            root=root,
            db=root / DB_NAME,
            images=root / "images",
            refs=root / "refs",
            thumbnails=root / "thumbnails",
            trash=root / "trash",
            tmp=root / "tmp",
            settings_file=settings_file,
            log_dir=log_dir,
        )

    @classmethod
    def resolve(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        library_dir: Path | None = None,
    ) -> Paths:
        """Work out every path from the environment (``os.environ`` by default).

        ``library_dir`` (the setting of that name) replaces the data root unless
        ``NBDESK_HOME`` is set, which always wins. A leading ``~`` is expanded in both and
        relative paths are made absolute against the current directory.
        """
        environ = os.environ if env is None else env
        home = environ.get(ENV_HOME, "").strip()
        if home:
            base = _absolute(Path(home))
            return cls.for_root(base, settings_file=base / SETTINGS_NAME, log_dir=base / "logs")
        data, config, logs = _user_dirs()
        return cls.for_root(
            _absolute(data if library_dir is None else library_dir),
            settings_file=config / SETTINGS_NAME,
            log_dir=logs,
        )

    @property
    def library_dirs(self) -> tuple[Path, ...]:
        """The folders of the library itself, root first."""
        return (self.root, self.images, self.refs, self.thumbnails, self.trash, self.tmp)

    def ensure(self) -> None:
        """Create every folder that is missing, private (0o700): they hold the user's
        prompts and images.

        The library root, the settings' and the log folder are left as they are if they
        exist (the user may have chosen a shared folder on purpose); what nbdesk makes in
        them is private all the same (``tighten``, ``private_umask``)."""
        for folder in (*self.library_dirs, self.settings_file.parent, self.log_dir):
            private_mkdir(folder)

    def tighten(self) -> None:
        """Make nbdesk's own folders in the library (images, refs, thumbnails, trash,
        tmp) and its database files private again if they are not (an older nbdesk made
        them under the user's umask): what is in those folders is then private too. The
        library folder itself is the user's choice and is left alone."""
        for path, mode in (*((d, PRIVATE_DIR) for d in self.library_dirs[1:]),
                           *((self.db.with_name(self.db.name + s), PRIVATE_FILE)
                             for s in ("", "-wal", "-shm"))):
            with contextlib.suppress(OSError):  # (not ours to change: left as it is)
                if path.stat().st_mode & 0o077:
                    path.chmod(mode)


#: Modes of what nbdesk creates: its owner's only.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_mkdir(folder: Path) -> None:
    """Make a folder and any missing parent, each private (0o700) whatever the umask
    (``Path.mkdir(mode=...)`` gives the parents it makes the umask's mode)."""
    if folder.is_dir():
        return
    if folder.parent != folder:
        private_mkdir(folder.parent)
    with contextlib.suppress(FileExistsError):  # (made meanwhile: another process)
        folder.mkdir(mode=PRIVATE_DIR)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX); a no-op where a folder
    cannot be opened or synced (Windows, some file systems): nothing to gain there."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_synced(dest: Path, data: bytes) -> None:
    """Write ``data`` whole to ``dest`` via ``dest.part`` (fsynced, then renamed), so that
    ``dest`` is either absent or complete; ``OSError`` leaves no ``.part`` behind."""
    tmp = dest.with_suffix(".part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def private_umask() -> int:
    """Make everything this process creates from now on private to its owner (files
    0o600, folders 0o700): the process's entry points call it first. Returns the
    previous umask."""
    return os.umask(0o077)


def _user_dirs() -> tuple[Path, Path, Path]:
    """The user's data, config and log folders for nbdesk."""
    if sys.platform.startswith("linux") and not hasattr(sys, "getandroidapilevel"):
        # The XDG base directories, as platformdirs reads them (an XDG variable counts
        # only if it is an absolute path; so does HOME, else the account's home); here
        # because importing platformdirs takes 5-8 ms of the window's start.
        home_env = os.environ.get("HOME", "")
        if os.path.isabs(home_env):
            home = Path(home_env)
        else:
            import pwd

            home = Path(pwd.getpwuid(os.getuid()).pw_dir)

        def xdg(var: str, default: str) -> Path:
            value = os.environ.get(var, "")
            return Path(value) if os.path.isabs(value) else home / default

        return (xdg("XDG_DATA_HOME", ".local/share") / APP_NAME,
                xdg("XDG_CONFIG_HOME", ".config") / APP_NAME,
                xdg("XDG_STATE_HOME", ".local/state") / APP_NAME / "log")
    import platformdirs

    # appauthor=False: no "<author>\\" level on Windows; the same folders elsewhere.
    return (Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_log_dir(APP_NAME, appauthor=False)))


def _absolute(path: Path) -> Path:
    return path.expanduser().absolute()
