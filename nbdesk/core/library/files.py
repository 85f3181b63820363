"""The library's files: a job's downloads and answers kept in tmp/, images renamed into
place under images/, reference copies under refs/, and the check of files against rows.

Files are written to a temp name, fsynced and renamed into place before the row that
names them is committed."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nbdesk.core.failpoints import failpoint
from nbdesk.core.library.errors import UnsafePath
from nbdesk.core.library.safety import Folder
from nbdesk.core.library.store import Store
from nbdesk.core.paths import PRIVATE_FILE, fsync_dir, private_mkdir, write_synced

if TYPE_CHECKING:  # the job classes load with the first job read or written: the
    # library grid opens the library and reads its items before any is
    from nbdesk.core.jobs import Job

log = logging.getLogger("nbdesk.core.library")


@dataclass(frozen=True)
class StoredImage:
    """An image file already renamed into place, waiting for its row."""

    idx: int
    rel_path: str
    sha256: str
    size: int
    width: int
    height: int
    format: str


def sha256_hex(data: bytes) -> str:
    import hashlib  # (here: OpenSSL takes ~10 ms to load, and the window opens its
    # library before anything is hashed)

    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



class FileStore(Store, Folder):
    """Files in tmp/, images/ and refs/ (a part of ``Library``)."""

    def tmp_path(self, job_id: str, idx: int) -> Path:
        return self.inside(f"tmp/{self._stem(job_id)}-{idx}.part", within=self.paths.tmp)

    @staticmethod
    def _stem(job_id: str) -> str:
        """A job id as (part of) a file name in tmp/; a crafted one (a path, a wildcard
        its globs would expand) is refused."""
        from nbdesk.core.jobs import safe_job_id  # (the job classes load after the grid)

        try:
            return safe_job_id(job_id)
        except ValueError as exc:
            raise UnsafePath(job_id, str(exc)) from None

    def clear_tmp(self, job_id: str) -> None:
        self.tmp_path(job_id, 0)  # (a job id that leads out of tmp/ is refused)
        for stale in self.paths.tmp.glob(f"{job_id}-*.part"):
            stale.unlink(missing_ok=True)

    # Images that came inside a synchronous answer are kept here (fsynced) from the
    # moment the answer is read until they are placed: a crash in between loses nothing.

    def answer_path(self, job_id: str, idx: int) -> Path:
        return self.inside(f"tmp/{self._stem(job_id)}-{idx}.answer", within=self.paths.tmp)

    def keep_answer(self, job_id: str, images: Sequence[bytes]) -> list[str]:
        """Write the images of an answer; returns their SHA-256s.

        An image the library's folder cannot take (a full disk...) is kept in the
        fallback folder (``core.answers``) instead; ``OSError`` only if that fails too.
        No partial file is left either way."""
        from nbdesk.core import answers

        digests: list[str] = []
        for idx, data in enumerate(images):
            try:
                write_synced(self.answer_path(job_id, idx), data)
            except OSError as exc:
                try:
                    answers.spill(job_id, idx, data)
                except OSError:
                    raise exc from None
            digests.append(sha256_hex(data))
        fsync_dir(self.paths.tmp)
        return digests

    def clear_answer(self, job_id: str) -> None:
        from nbdesk.core import answers

        self.answer_path(job_id, 0)  # (a job id that leads out of tmp/ is refused)
        for stale in self.paths.tmp.glob(f"{job_id}-*.answer"):
            stale.unlink(missing_ok=True)
        answers.drop(job_id)

    def placed_file(self, job: Job, idx: int, sha256: str) -> Path | None:
        """The image file of this job and index already renamed into place (a process died
        before writing its row), if its content is the expected one."""
        named = self.item_file(self.image_rel_path(job, idx, "x"))
        for path in named.parent.glob(f"{named.stem}.*"):
            if (path.is_file() and self._own_file(path)
                    and sha256_file(path) == sha256):
                return path
        return None

    def _own_file(self, path: Path) -> bool:
        """A file found under images/ by name is the library's (not a symlink out)."""
        try:
            self.item_file(path.relative_to(self.root))
        except (UnsafePath, ValueError) as exc:
            log.warning("library file %s skipped: %s", path, exc)
            return False
        return True

    def remove_unrecorded_images(self, job: Job) -> int:
        """Delete image files at this job's names that no row records (a process died
        between placing them and writing their rows, and the job is being cancelled)."""
        recorded = {str(r["path"]) for r in self._query(
            "SELECT path FROM items WHERE job_id = ?", (job.id,))}
        folder = self.item_file(self.image_rel_path(job, 0, "x")).parent
        removed = 0
        for path in folder.glob(f"*-{job.id[:8]}-*.*"):
            if path.relative_to(self.root).as_posix() not in recorded and (
                path.is_symlink() or self._own_file(path)  # (a symlink: itself removed)
            ):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def image_rel_path(self, job: Job, idx: int, ext: str) -> str:
        stamp = time.gmtime(job.created_at)
        return (
            f"images/{stamp.tm_year:04d}/{stamp.tm_mon:02d}/"
            f"{time.strftime('%Y%m%d-%H%M%S', stamp)}-{job.id[:8]}-{idx}.{ext}"
        )

    def place_image(
        self, job: Job, idx: int, tmp: Path, *, sha256: str, size: int, width: int,
        height: int, fmt: str, ext: str,
    ) -> StoredImage:
        """Rename a verified, fsynced temp file to its final, deterministic name."""
        rel = self.image_rel_path(job, idx, ext)
        final = self.item_file(rel)
        private_mkdir(final.parent)
        failpoint("download.written")
        os.chmod(tmp, PRIVATE_FILE)  # (written by whoever downloaded it, under any umask)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        failpoint("file.renamed")
        return StoredImage(idx, rel, sha256, size, width, height, fmt)

    def import_ref(self, data: bytes, ext: str) -> tuple[str, str]:
        """Copy a reference image into refs/ by content; returns (rel path, sha256)."""
        digest = sha256_hex(data)
        rel = f"refs/{digest[:2]}/{digest}.{ext}"
        final = self.ref_file(rel)
        if not final.exists():
            private_mkdir(final.parent)
            tmp = self.paths.tmp / f"ref-{digest}-{os.urandom(3).hex()}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with open(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(final.parent)
        return rel, digest

    def verify(self) -> list[str]:
        """Problems found: integrity, missing files, hash mismatches, stray files."""
        problems: list[str] = []
        result = self._query("PRAGMA integrity_check")[0][0]
        if result != "ok":
            problems.append(f"integrity_check: {result}")
        known: set[str] = set()
        for row in self._query("SELECT id, path, sha256, deleted_at FROM items"):
            try:
                path = (self.item_file(row["path"]) if row["deleted_at"] is None
                        else self.trashed_file(row["path"]))
            except UnsafePath as exc:
                problems.append(f"item {row['id']}: skipped: {exc}")
                continue
            known.add(row["path"])
            if not path.exists():
                problems.append(f"item {row['id']}: file missing: {path}")
            elif sha256_file(path) != row["sha256"]:
                problems.append(f"item {row['id']}: SHA-256 mismatch: {path}")
        for path in self.paths.images.rglob("*"):
            if path.is_symlink() and not self._own_file(path):
                problems.append(f"symlink out of the library: {path}")
            elif path.is_file() and path.relative_to(self.root).as_posix() not in known:
                problems.append(f"stray file not in the library: {path}")
        return problems

    def sweep_tmp(self, older_than: float = 600.0) -> int:
        """Remove reference temp files a crashed import left behind (job temp files
        belong to their job and go when it is resumed or cancelled)."""
        removed = 0
        cutoff = time.time() - older_than
        for stale in self.paths.tmp.glob("ref-*.part"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()
                    removed += 1
        return removed

    def tmp_files(self) -> list[Path]:
        return [p for p in self.paths.tmp.iterdir() if p.is_file()]
