"""Why a SQLite call failed, said for the user: ``database_error`` translates an error
into a typed ``LibraryError`` (locked, and by what; read-only, and why; damaged; full)."""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from nbdesk.core.library.errors import (
    DatabaseDamaged,
    DatabaseFull,
    DatabaseLocked,
    DatabaseProblem,
    DatabaseReadOnly,
    LibraryError,
)
from nbdesk.core.library.owners import owner_alive

# SQLite's primary result codes (an extended code's low byte)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_NOTADB = 26


def database_error(
    exc: sqlite3.Error, db: Path, conn: sqlite3.Connection | None = None
) -> LibraryError:
    """The one translation of a SQLite error into what the user is told: a typed
    ``LibraryError`` (locked, and by what; read-only, and why; damaged; full) whose text
    says what is wrong and what to do. ``conn`` (optional) is asked for the leases of
    live nbdesk processes when the operating system cannot say who holds the lock."""
    if isinstance(exc, LibraryError):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
        return DatabaseLocked(f"the library database {db} is {lock_holder(db, conn)}")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or (
        "malformed" in text or "not a database" in text
    ):
        return DatabaseDamaged(
            f"the library database {db} is damaged ({text}); it was left untouched. "
            "Move it aside to start a new library, or restore it from a backup."
        )
    if primary == _SQLITE_FULL:
        return DatabaseFull(
            f"the disk holding the library database {db} is full; free some space, "
            "then try again"
        )
    why = _not_writable(db)
    if primary in (_SQLITE_READONLY, _SQLITE_PERM) or (
        primary in (_SQLITE_CANTOPEN, None) and why is not None
    ):
        return DatabaseReadOnly(
            f"the library database is read-only: {why or text}; check the folder's "
            f"permissions ({db.parent})"
        )
    if primary == _SQLITE_IOERR:
        return DatabaseProblem(
            f"cannot read or write the library database {db} ({text}); check the disk, "
            "then try again"
        )
    return DatabaseProblem(f"the library database {db} failed: {text}")


def _not_writable(db: Path) -> str | None:
    """Why the database cannot be written (None: no reason found)."""
    folder = db.parent
    with contextlib.suppress(OSError, AttributeError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"the disk holding {folder} is mounted read-only"
    if db.exists() and not os.access(db, os.W_OK):
        return f"{db} cannot be written"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} cannot be written"
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists() and not os.access(side, os.W_OK):
            return f"{side} cannot be written"
    return None


def lock_holder(db: Path, conn: sqlite3.Connection | None = None) -> str:
    """What holds the database's write lock, as the rest of a sentence ("locked by
    ...; what to do"). Linux tells which process holds the lock (/proc/locks); else a
    live lease of another nbdesk process on this host points at it."""
    others = [pid for pid in _write_lock_pids(db) if pid != os.getpid()]
    for pid in others:
        argv = _cmdline(pid)
        if _is_nbdesk(argv):
            return (f"locked by another nbdesk (pid {pid}) writing to it; wait for it to "
                    "finish, or close it, then try again")
    if others:
        argv = _cmdline(others[0])
        name = Path(argv[0]).name if argv and argv[0] else "unknown"
        return (f"locked by another program ({name}, pid {others[0]}): a backup tool or a "
                "database shell, say; close it, then try again")
    for pid in _live_lease_pids(conn):
        return (f"locked, perhaps by another nbdesk (pid {pid}, which has jobs under way "
                "in this library); wait for it to finish, or close it, then try again")
    return ("locked by another program (another nbdesk, a backup tool or a database "
            "shell); close it, then try again")


def _write_lock_pids(db: Path) -> list[int]:
    """Processes holding a write lock on the database or its WAL index (Linux)."""
    wanted: set[tuple[int, int, int]] = set()
    for path in (db, db.with_name(db.name + "-shm")):
        with contextlib.suppress(OSError):
            st = path.stat()
            wanted.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids: list[int] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[3] != "WRITE":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key in wanted and pid > 0 and pid not in pids:
            pids.append(pid)
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _is_nbdesk(argv: Sequence[str]) -> bool:
    """An nbdesk process: the ``nbdesk`` script (or a bundle named so), ``python -m
    nbdesk``, or a Python running a script of that name."""
    if not argv:
        return False
    if Path(argv[0]).name.lower().startswith("nbdesk"):
        return True
    if any(flag == "-m" and arg.split(".")[0] == "nbdesk"
           for flag, arg in itertools.pairwise(argv)):
        return True
    return len(argv) > 1 and Path(argv[1]).name.lower().startswith("nbdesk")


def _live_lease_pids(conn: sqlite3.Connection | None) -> list[int]:
    """Pids of other live nbdesk processes on this host holding job leases."""
    if conn is None:
        return []
    import socket

    try:
        rows = conn.execute(
            "SELECT DISTINCT lease_owner FROM jobs WHERE lease_owner IS NOT NULL"
        ).fetchall()
    except sqlite3.Error:
        return []
    pids: list[int] = []
    for (owner,) in rows:
        host, _, rest = str(owner).partition(":")
        pid = rest.partition(":")[0]
        if (host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid()
                and owner_alive(str(owner))):
            pids.append(int(pid))
    return pids
