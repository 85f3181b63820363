"""Desktop integration, without Qt: where the icons are, image files given on the command
line ("Open with nbdesk"), and the Linux launcher (``nbdesk install-desktop``).

``install-desktop`` writes, for the current user only (``$XDG_DATA_HOME``, by default
``~/.local/share``):

* ``applications/nbdesk.desktop`` — the app-menu entry; its ``Exec`` line runs this very
  program (the frozen binary, or the ``nbdesk`` script of this environment) with
  ``gui %F``, and its ``MimeType`` offers nbdesk for PNG, JPEG and WebP files;
* ``icons/hicolor/<N>x<N>/apps/nbdesk.png`` (16-512) and ``.../scalable/apps/nbdesk.svg``;
* ``metainfo/io.github.nbdesk.nbdesk.metainfo.xml`` — the AppStream description that
  software centres read.

It then refreshes the desktop database and the icon cache when those tools exist (they
are optional: menus pick the files up on their own, only later). Nothing outside the
user's data folder is touched; ``uninstall-desktop`` removes exactly those files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

APP_ID = "io.github.nbdesk.nbdesk"  # reverse-DNS id of the AppStream metainfo
DESKTOP_NAME = "nbdesk"  # nbdesk.desktop; also QGuiApplication.desktopFileName
ICON_NAME = "nbdesk"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
#: what "Open with nbdesk" is offered for
MIME_TYPES = ("image/png", "image/jpeg", "image/webp")


# ---------------------------------------------------------------------------- resources


def resource_dir() -> Path:
    """The folder with ``nbdesk.svg`` and ``icons/``: inside the bundle when frozen
    (PyInstaller), else the source tree's ``resources/``."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    candidates = []
    if frozen_root:
        candidates.append(Path(frozen_root) / "resources")
    here = Path(__file__).resolve().parent
    candidates += [here / "resources", here.parent / "resources"]
    for c in candidates:
        if (c / "nbdesk.svg").is_file():
            return c
    return candidates[-1]


def icon_png(size: int, resources: Path | None = None) -> Path:
    return (resources or resource_dir()) / "icons" / f"nbdesk-{size}.png"


def icon_svg(resources: Path | None = None) -> Path:
    return (resources or resource_dir()) / "nbdesk.svg"


# ---------------------------------------------------------------------------- file arguments


def local_path(arg: str) -> Path | None:
    """A command-line argument as a local file path: a plain path or a ``file://`` URL
    (some file managers pass those). ``None`` for anything else (http URLs, empty)."""
    text = arg.strip()
    if not text:
        return None
    if text.lower().startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            return None
        return Path(unquote(parts.path)).absolute()
    if "://" in text:
        return None
    return Path(text).expanduser().absolute()


def looks_like_files(argv: Sequence[str]) -> bool:
    """Whether a command line is "open these files" (``nbdesk photo.png``, how Windows
    and some file managers call an app) rather than a subcommand: its first word is an
    existing file or a ``file://`` URL."""
    if not argv or argv[0].startswith("-"):
        return False
    if argv[0].lower().startswith("file:"):
        return True
    path = local_path(argv[0])
    return path is not None and path.is_file()


# ---------------------------------------------------------------------------- launcher


def launch_command(executable: str | None = None) -> list[str]:
    """How a launcher starts this installation of nbdesk (without the file arguments).

    Frozen (PyInstaller): the bundle's own binary. Otherwise the ``nbdesk`` script next
    to this interpreter (a venv's ``bin/``), else ``python -m nbdesk``."""
    if executable is not None:
        return [executable]
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).resolve())]
    script = Path(sys.executable).parent / ("nbdesk.exe" if os.name == "nt" else "nbdesk")
    if script.is_file():
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "nbdesk"]


def _desktop_quote(arg: str) -> str:
    """Quote one Exec argument the freedesktop way: double quotes when needed, with
    ``"`` `` ` `` ``$`` ``\\`` escaped by a backslash; ``%`` doubled."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`'):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def exec_line(command: Sequence[str]) -> str:
    """The ``Exec`` value: the command, ``gui``, and ``%F`` (the files to open). The
    string-level escape (a backslash written twice) applies on top of the quoting."""
    line = " ".join([*(_desktop_quote(a) for a in command), "gui", "%F"])
    return line.replace("\\", "\\\\")


def desktop_entry(command: Sequence[str], template: str | None = None) -> str:
    """``packaging/linux/nbdesk.desktop`` with its Exec/TryExec pointing at ``command``."""
    text = template if template is not None else _template("nbdesk.desktop")
    lines = []
    for line in text.splitlines():
        if line.startswith("Exec="):
            line = "Exec=" + exec_line(command)
        elif line.startswith("TryExec="):
            line = "TryExec=" + _desktop_quote(command[0])
        lines.append(line)
    return "\n".join(lines) + "\n"


def _template(name: str) -> str:
    """A file of ``packaging/linux`` (the frozen app bundles that folder as it is)."""
    return (resource_dir().parent / "packaging" / "linux" / name).read_text(encoding="utf-8")


def data_home(env: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    value = environ.get("XDG_DATA_HOME", "").strip()
    if value and Path(value).is_absolute():
        return Path(value)
    return Path(environ.get("HOME") or Path.home()) / ".local" / "share"


@dataclass
class Installed:
    files: list[Path] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)  # cache tools that ran


def _targets(data: Path) -> dict[str, Path]:
    return {
        "desktop": data / "applications" / f"{DESKTOP_NAME}.desktop",
        "metainfo": data / "metainfo" / f"{APP_ID}.metainfo.xml",
        "svg": data / "icons" / "hicolor" / "scalable" / "apps" / f"{ICON_NAME}.svg",
        **{f"png{s}": data / "icons" / "hicolor" / f"{s}x{s}" / "apps" / f"{ICON_NAME}.png"
           for s in ICON_SIZES},
    }


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def install_desktop(
    *, env: Mapping[str, str] | None = None, command: Sequence[str] | None = None,
    refresh: bool = True,
) -> Installed:
    """Install the launcher, icons and metainfo for the current user (see the module)."""
    data = data_home(env)
    cmd = list(command) if command is not None else launch_command()
    targets = _targets(data)
    res = resource_dir()
    done = Installed()
    _write(targets["desktop"], desktop_entry(cmd).encode("utf-8"))
    _write(targets["metainfo"], _template(f"{APP_ID}.metainfo.xml").encode("utf-8"))
    _write(targets["svg"], icon_svg(res).read_bytes())
    for s in ICON_SIZES:
        _write(targets[f"png{s}"], icon_png(s, res).read_bytes())
    done.files = list(targets.values())
    if refresh:
        done.refreshed = _refresh(data)
    return done


def uninstall_desktop(*, env: Mapping[str, str] | None = None,
                      refresh: bool = True) -> list[Path]:
    """Remove what ``install_desktop`` wrote; the files that were there."""
    data = data_home(env)
    removed = []
    for path in _targets(data).values():
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    if refresh:
        _refresh(data)
    return removed


def _refresh(data: Path) -> list[str]:
    """Let menus and file managers see the change now (best effort, optional tools)."""
    import shutil  # (here: the window imports this module as it starts)
    import subprocess

    ran = []
    for tool, args in (
        ("update-desktop-database", ["-q", str(data / "applications")]),
        ("gtk-update-icon-cache", ["-q", "-t", "-f", str(data / "icons" / "hicolor")]),
    ):
        exe = shutil.which(tool)
        if exe is None:
            continue
        try:
            subprocess.run([exe, *args], check=False, timeout=30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        ran.append(tool)
    return ran


def describe(done: Installed, command: Sequence[str]) -> str:
    import shlex

    return (f"installed the nbdesk launcher ({len(done.files)} files) for "
            f"{shlex.join(command)}:\n  " + "\n  ".join(str(f) for f in done.files))
