"""A fallback home for a synchronous answer's paid images when the library cannot take them.

Gemini's answer *is* the image: once it is here it was paid, and there is no remote job
to ask again. If the library's folder fails (a full disk, a file-size limit, a read-only
folder), the bytes are written to the system's temp folder instead (often another
filesystem), in pieces of PIECE bytes (so a per-file size limit does not stop them
either), fsynced, with their SHA-256 written last: a complete copy has it. A retry (in
this process or the next) restores the image from here and stores it without a new call.
The place is derived from the job id, so nothing else needs recording.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from nbdesk.core.jobs import safe_job_id

PIECE = 256 * 1024


def root() -> Path:
    owner = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"nbdesk-answers-{owner}"


def _private_root() -> None:
    """Make the folder, or accept it only if it is ours alone: the temp folder is shared,
    and another user could have made (or linked) one by that name first."""
    top = root()
    top.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode) or (
            hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o077)):
        raise PermissionError(f"{top} is not a folder of this user's alone; not used")


def place(job_id: str, idx: int) -> Path:
    return root() / f"{safe_job_id(job_id)}-{idx}"


def spill(job_id: str, idx: int, data: bytes) -> Path:
    """Keep ``data`` durably outside the library; ``OSError`` if that fails too (then
    nothing of it is left behind)."""
    folder = place(job_id, idx)
    try:
        _private_root()
        folder.mkdir(mode=0o700, exist_ok=True)
        for n, start in enumerate(range(0, len(data), PIECE)):
            with open(folder / f"{n:05d}", "wb") as fh:
                fh.write(data[start:start + PIECE])
                fh.flush()
                os.fsync(fh.fileno())
        with open(folder / "sha256", "w", encoding="ascii") as fh:
            fh.write(hashlib.sha256(data).hexdigest())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def kept(job_id: str, idx: int) -> bool:
    return (place(job_id, idx) / "sha256").is_file()


def restore(job_id: str, idx: int, dest: Path) -> bool:
    """Write the kept image whole to ``dest`` (via ``dest.part``, fsynced); False if no
    complete, intact copy is kept. ``OSError`` if ``dest`` cannot be written (nothing
    partial is left; the copy stays)."""
    folder = place(job_id, idx)
    try:
        expected = (folder / "sha256").read_text("ascii").strip()
        pieces = sorted(p for p in folder.iterdir() if p.name.isdigit())
    except OSError:
        return False
    digest = hashlib.sha256()
    tmp = dest.with_suffix(".part")
    try:
        with open(tmp, "wb") as out:
            for piece in pieces:
                block = piece.read_bytes()
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return True


def drop(job_id: str) -> None:
    """Forget every kept image of this job (stored, or the job cancelled)."""
    stem = safe_job_id(job_id)
    base = root()
    if not base.is_dir():
        return
    for folder in base.glob(f"{stem}-*"):
        shutil.rmtree(folder, ignore_errors=True)
