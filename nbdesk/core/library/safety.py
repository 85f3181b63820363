"""Path safety: every path the library reads, moves or deletes is checked to lie inside
its folder (a damaged or crafted database row is refused, never followed)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nbdesk.core.library.errors import UnsafePath
from nbdesk.core.paths import Paths

log = logging.getLogger("nbdesk.core.library")


class Folder:
    """The library folder's part of ``Library`` (which sets these attributes up)."""

    paths: Paths
    root: Path
    _real_dirs: dict[str, str]
    _warned: set[int]  # items already warned about (once each)

    def inside(self, rel: str | Path, *, within: Path | None = None) -> Path:
        """The one check of a path the library reads, moves or deletes: ``rel`` (relative
        to the library folder, as the database keeps it) must name something inside
        ``within`` (the library folder by default) once symlinks are resolved. Absolute
        paths, ``..`` and symlinks pointing out are refused (UnsafePath); the path is
        returned as ``root / rel``."""
        text = rel.as_posix() if isinstance(rel, Path) else str(rel)
        parts = text.replace("\\", "/").split("/")
        if not text or "\0" in text:
            raise UnsafePath(text, "not a file name")
        if text.startswith(("/", "\\")) or os.path.isabs(text) or (
            len(text) > 1 and text[1] == ":"
        ):
            raise UnsafePath(text, "an absolute path")
        if ".." in parts:
            raise UnsafePath(text, "'..' leads out of its folder")
        path = os.path.join(self.root, text)
        base = self._real_dir(os.fspath(within or self.root))
        try:
            real = self._real_dir(os.path.dirname(path))
            if os.path.islink(path):
                real = os.path.realpath(path, strict=True)
        except (OSError, RuntimeError) as exc:  # a symlink loop, a dangling one
            raise UnsafePath(text, f"cannot be resolved ({exc})") from None
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise UnsafePath(text, f"a symlink leads to {real}")
        return Path(path)

    def _real_dir(self, folder: str) -> str:
        """A folder with symlinks resolved; remembered once it exists (an item's path is
        checked at every read: a few µs then, not ~35 µs)."""
        real = self._real_dirs.get(folder)
        if real is None:
            real = os.path.realpath(folder)
            if os.path.isdir(folder):
                self._real_dirs[folder] = real
        return real

    def item_file(self, rel: str | Path) -> Path:
        """An image's file (under images/)."""
        return self.inside(rel, within=self.paths.images)

    def trashed_file(self, rel: str | Path) -> Path:
        """Where an image's file is while the image is in the trash."""
        self.item_file(rel)  # its own path is an image's, and
        return self.inside(Path("trash") / rel, within=self.paths.trash)

    def ref_file(self, rel: str | Path) -> Path:
        """A reference image's copy (under refs/)."""
        return self.inside(rel, within=self.paths.refs)

    def _refused(self, item_id: int, exc: UnsafePath) -> None:
        if item_id not in self._warned:
            self._warned.add(item_id)
            log.warning("library item %s skipped: %s", item_id, exc)
