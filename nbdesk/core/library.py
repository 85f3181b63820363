"""The local library: SQLite (WAL, migrations by ``PRAGMA user_version``) plus image files.

Files are written to a temp name, fsynced and renamed into place before the row that
names them is committed; the row and the job's ``completed`` state go in one
transaction. Deleting moves files to the trash folder and can be undone.

All methods are synchronous and thread-safe (one connection behind a lock); the
engine and the window call them from a worker thread, never the GUI thread.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdesk.core.failpoints import failpoint
from nbdesk.core.paths import PRIVATE_FILE, Paths, fsync_dir, private_mkdir, write_synced
from nbdesk.core.refs import RefRecord

if TYPE_CHECKING:  # the job classes load with the first job read or written: the
    # library grid opens the library and reads its items before any is
    from nbdesk.core.jobs import Job, JobSpec, JobState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    idem_key         TEXT NOT NULL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    provider         TEXT NOT NULL,
    demo             INTEGER NOT NULL DEFAULT 0,
    model            TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    params           TEXT NOT NULL DEFAULT '{}',
    refs             TEXT NOT NULL DEFAULT '[]',
    parent_item      INTEGER REFERENCES items(id) ON DELETE SET NULL,
    state            TEXT NOT NULL,
    remote_id        TEXT,
    progress         REAL,
    cost             REAL,
    error            TEXT,
    error_kind       TEXT,
    note             TEXT,
    result_urls      TEXT NOT NULL DEFAULT '[]',
    submit_attempts  INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires    REAL,
    submitted_at     REAL,
    finished_at      REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_created ON jobs(created_at);

CREATE TABLE items (
    id           INTEGER PRIMARY KEY,
    job_id       TEXT REFERENCES jobs(id) ON DELETE SET NULL,
    idx          INTEGER NOT NULL DEFAULT 0,
    path         TEXT NOT NULL UNIQUE,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    format       TEXT NOT NULL,
    prompt       TEXT NOT NULL,
    provider     TEXT NOT NULL,
    demo         INTEGER NOT NULL DEFAULT 0,
    model        TEXT NOT NULL,
    params       TEXT NOT NULL DEFAULT '{}',
    refs         TEXT NOT NULL DEFAULT '[]',
    cost         REAL,
    remote_id    TEXT,
    parent_item  INTEGER REFERENCES items(id) ON DELETE SET NULL,
    created_at   REAL NOT NULL,
    completed_at REAL NOT NULL,
    favourite    INTEGER NOT NULL DEFAULT 0,
    deleted_at   REAL
);
CREATE UNIQUE INDEX items_job_idx ON items(job_id, idx);
CREATE INDEX items_completed ON items(completed_at);
CREATE INDEX items_provider_model ON items(provider, model);

CREATE VIRTUAL TABLE items_fts USING fts5(
    prompt, content='items', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER items_ai AFTER INSERT ON items BEGIN
    INSERT INTO items_fts(rowid, prompt) VALUES (new.id, new.prompt);
END;
CREATE TRIGGER items_ad AFTER DELETE ON items BEGIN
    INSERT INTO items_fts(items_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt);
END;
CREATE TRIGGER items_au AFTER UPDATE OF prompt ON items BEGIN
    INSERT INTO items_fts(items_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt);
    INSERT INTO items_fts(rowid, prompt) VALUES (new.id, new.prompt);
END;
"""

# Version 2: conversational editing. ``turn`` is the model's answer as it must be sent
# back to continue from an image (its text parts and thought signatures, JSON; an image
# part names the image's index in the job): on the job until the images are stored,
# then on each item. Not in the full-text index. Edit chains are walked by parent_item.
_SCHEMA_V2 = """
ALTER TABLE jobs ADD COLUMN turn TEXT NOT NULL DEFAULT '[]';
ALTER TABLE items ADD COLUMN turn TEXT NOT NULL DEFAULT '[]';
CREATE INDEX items_parent ON items(parent_item);
"""

#: Each entry upgrades from version (index) to version (index + 1).
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)

#: Indexes an older nbdesk can ignore: made when missing, without raising the schema
#: version (which would make an older nbdesk refuse the library).
#: ``items_live_order``: the grid's order (newest first, trash left out), so the grid's
#: ids (every opening and reload of the grid) are read in index order with no trashed
#: rows to skip: 11 -> 7 ms for 10,000 items.
EXTRA_INDEXES = (
    "CREATE INDEX IF NOT EXISTS items_live_order"
    " ON items(completed_at DESC, id DESC) WHERE deleted_at IS NULL",
)

_HEX = frozenset("0123456789abcdef")

#: UPDATE ... RETURNING (SQLite 3.35+)
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


class LibraryError(Exception):
    """The library cannot be opened or written; ``str()`` is user-facing."""


class NotFound(LibraryError, KeyError):
    """No such job or image (removed meanwhile, by another window or the CLI). A
    KeyError too, for the callers that ask whether one exists."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what

    def __str__(self) -> str:  # (KeyError's would quote it)
        return f"{self.what} is no longer in the library"


class UnsafePath(LibraryError):
    """A path the library was asked to read, move or delete is not inside its folder
    (a damaged or crafted database row): refused, never followed."""

    def __init__(self, rel: str, reason: str) -> None:
        super().__init__(
            f"the library's record names a file outside the library folder ({rel!r}: "
            f"{reason}); it was skipped and nothing outside the library was touched"
        )
        self.rel = rel
        self.reason = reason


class RowsSkipped(LibraryError):
    """Some items were not acted on: their rows name paths outside the library. The
    others were (``done``: their ids)."""

    def __init__(self, action: str, skipped: Sequence[tuple[int, UnsafePath]],
                 done: Sequence[int]) -> None:
        first_id, first = skipped[0]
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        super().__init__(
            f"{len(skipped)} image(s) not {action}: the library's record of image "
            f"#{first_id}{more} names a file outside the library folder ({first.rel!r}: "
            f"{first.reason}); nothing outside the library was touched. "
            f"{len(done)} image(s) {action}."
        )
        self.skipped = list(skipped)
        self.done = list(done)


class DatabaseProblem(LibraryError, sqlite3.OperationalError):
    """A SQLite error explained for the user (made by ``database_error``). Still a
    ``sqlite3.OperationalError`` for code that catches those (a failed write is a storage
    failure there)."""


class DatabaseLocked(DatabaseProblem):
    """Another process holds the database's write lock."""


class DatabaseReadOnly(DatabaseProblem):
    """The database file or its folder cannot be written."""


class DatabaseDamaged(DatabaseProblem):
    """The file is not a database, or a damaged one."""


class DatabaseFull(DatabaseProblem):
    """No space left for the database."""


class LeaseLost(Exception):
    """Another process took this job over; this process stops working on it."""


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


@dataclass(frozen=True)
class Item:
    id: int
    job_id: str | None
    idx: int
    path: Path
    sha256: str
    size: int
    width: int
    height: int
    format: str
    prompt: str
    provider: str
    demo: bool
    model: str
    params: dict[str, Any]
    refs: tuple[RefRecord, ...]
    cost: float | None
    remote_id: str | None
    parent_item: int | None
    created_at: float
    completed_at: float
    favourite: bool
    deleted_at: float | None
    #: the model's answer parts (text, thought signatures) for conversational editing
    turn: tuple[dict[str, Any], ...] = ()

    @property
    def signatures(self) -> list[str]:
        """The thought signatures kept with this image (what an edit sends back)."""
        return [
            str(p["sig"]) for p in self.turn
            if p.get("sig") and ("text" in p or p.get("image") == self.idx)
        ]

    @property
    def answer_text(self) -> str:
        """Text the model answered beside the image, if any."""
        return "\n".join(str(p["text"]) for p in self.turn if p.get("text")).strip()


@dataclass(frozen=True)
class FirstPage:
    """The library grid's opening rows: every id (newest first), the first page's items."""

    ids: list[int]
    items: dict[int, Item]


def make_owner() -> str:
    """A lease owner id for this process: host, pid and a random suffix."""
    import socket  # (here: the window opens its library before it needs a lease)

    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_alive(owner: str) -> bool:
    """False only when the owner is provably dead (same host, no such process)."""
    import socket

    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


#: How long opening the library, and its first write, wait for another process's write
#: lock before saying who holds it (a person is waiting); later writes wait longer (an
#: engine's transactions beside another nbdesk's are short; a backup tool's may not be).
OPEN_BUSY_TIMEOUT = 3.0
BUSY_TIMEOUT = 15.0

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


def _create_private(path: Path) -> None:
    """Create an empty file only its owner may read (an empty file is an empty SQLite
    database), unless it exists."""
    if path.exists():
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


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


class Library:
    def __init__(self, paths: Paths, *, clock: Any = time.time) -> None:
        self.paths = paths
        self.root = paths.root
        self._clock = clock
        self._lock = threading.RLock()
        self._settled = False  # a write went through: later writes wait longer for locks
        self._first_attempt: float | None = None
        self._warned: set[int] = set()
        self._real_dirs: dict[str, str] = {}
        try:
            paths.ensure()
        except OSError as exc:
            raise LibraryError(
                f"cannot create the library folder {paths.root}: {exc.strerror}"
            ) from None
        self._conn = self._connect(paths.db)
        paths.tighten()

    # ------------------------------------------------------------------ paths

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

    # ------------------------------------------------------------------ opening

    def _connect(self, db: Path) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            _create_private(db)
            conn = sqlite3.connect(
                db, timeout=OPEN_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(OPEN_BUSY_TIMEOUT * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise LibraryError(
                    f"the library at {db} was written by a newer nbdesk (schema {version}, "
                    f"this version knows {SCHEMA_VERSION}); it was left untouched — "
                    "please update nbdesk"
                )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("library journal mode is %s, not WAL", mode)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn, version)
            self._add_extra_indexes(conn)
        except sqlite3.Error as exc:
            error = database_error(exc, db, conn)
            if conn is not None:
                conn.close()
            raise error from None
        except OSError as exc:
            raise database_error(
                sqlite3.OperationalError(f"{exc.strerror}: {db}"), db
            ) from None
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-read under the write lock: another process may have migrated meanwhile.
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current != version:
                    conn.execute("ROLLBACK")
                    version = current
                    continue
                for statement in _split_sql(MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            version += 1

    @staticmethod
    def _add_extra_indexes(conn: sqlite3.Connection) -> None:
        for statement in EXTRA_INDEXES:
            try:
                conn.execute(statement)
            except sqlite3.OperationalError as exc:  # (read-only, locked: slower, not wrong)
                log.warning("library index not made (%s): %s", exc, statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _error(self, exc: sqlite3.Error) -> LibraryError:
        return database_error(exc, self.paths.db, self._conn)

    def _unsettled_wait(self) -> None:
        """Until a first write goes through, the writes share one wait for another
        process's lock (``OPEN_BUSY_TIMEOUT`` from the first attempt): a command whose
        engine claims jobs while it queues new ones fails within seconds, not a wait per
        write."""
        now = time.monotonic()
        if self._first_attempt is None:
            self._first_attempt = now
        left = max(0.2, self._first_attempt + OPEN_BUSY_TIMEOUT - now)
        self._conn.execute(f"PRAGMA busy_timeout={int(left * 1000)}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if not self._settled:
                    self._unsettled_wait()
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise
            if not self._settled:
                self._settled = True
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def data_version(self) -> int:
        """Changes when another connection (another process) commits."""
        rows = self._query("PRAGMA data_version")
        value: int = rows[0][0]
        return value

    # ------------------------------------------------------------------ jobs

    def add_jobs(
        self, spec: JobSpec, refs: Sequence[RefRecord], count: int,
        owner: str | None = None, ttl: float = 30.0,
    ) -> list[Job]:
        """Write ``count`` queued jobs for ``spec``; each gets a fresh client UUID.

        With ``owner`` the jobs are leased to it from the start, so no other process
        can take them up between their insertion and their first step.
        """
        import uuid

        from nbdesk.core.jobs import JobState

        now = self._clock()
        expires = now + ttl if owner is not None else None
        ids = [str(uuid.uuid4()) for _ in range(count)]
        params = json.dumps(spec.params.to_dict())
        refs_json = json.dumps([r.__dict__ for r in refs])
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO jobs (id, idem_key, created_at, updated_at, provider, demo, model,"
                " prompt, params, refs, parent_item, state, lease_owner, lease_expires)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (i, i, now, now, spec.provider, int(spec.demo), spec.model, spec.prompt,
                     params, refs_json, spec.parent_item, JobState.QUEUED.value, owner, expires)
                    for i in ids
                ],
            )
        return [self.job(i) for i in ids]

    def job(self, job_id: str) -> Job:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"job {job_id}")
        return _job(rows[0])

    def find_job(self, prefix: str) -> Job:
        """A job by its id or a unique prefix of it (for the CLI)."""
        rows = self._query(
            "SELECT * FROM jobs WHERE id = ? OR id LIKE ? LIMIT 2",
            (prefix, prefix.replace("%", "").replace("_", "") + "%"),
        )
        exact = [r for r in rows if r["id"] == prefix]
        if exact:
            return _job(exact[0])
        if len(rows) != 1 or len(prefix) < 4:
            raise NotFound(f"a job {prefix!r}")
        return _job(rows[0])

    def jobs(
        self, states: Iterable[JobState] | None = None, limit: int | None = None
    ) -> list[Job]:
        sql = "SELECT * FROM jobs"
        args: list[Any] = []
        if states is not None:
            wanted = [s.value for s in states]
            sql += f" WHERE state IN ({','.join('?' * len(wanted))})"
            args += wanted
        sql += " ORDER BY created_at, rowid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_job(r) for r in self._query(sql, args)]

    def update_job(self, job_id: str, owner: str | None, **fields: Any) -> Job:
        """Persist fields of a job this owner holds the lease on (raises LeaseLost)."""
        fields = {k: _encode(v) for k, v in fields.items()}
        fields["updated_at"] = self._clock()
        sets = ", ".join(f"{k} = ?" for k in fields)
        args = [*fields.values(), job_id]
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        if owner is not None:
            sql += " AND lease_owner = ?"
            args.append(owner)
        if _RETURNING:  # the updated row in the same statement, not a second query
            with self._write() as conn:
                rows = conn.execute(sql + " RETURNING *", args).fetchall()
            if len(rows) != 1:
                raise LeaseLost(job_id)
            return _job(rows[0])
        with self._write() as conn:
            if conn.execute(sql, args).rowcount != 1:
                raise LeaseLost(job_id)
        return self.job(job_id)

    def claim(self, job_id: str, owner: str, ttl: float) -> Job | None:
        """Take the job's lease if it is free, expired or its owner is dead."""
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                "SELECT lease_owner, lease_expires FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            holder, expires = row["lease_owner"], row["lease_expires"]
            free = (
                holder is None
                or holder == owner
                or (expires is not None and expires < now)
                or not owner_alive(holder)
            )
            if not free:
                return None
            conn.execute(
                "UPDATE jobs SET lease_owner = ?, lease_expires = ? WHERE id = ?",
                (owner, now + ttl, job_id),
            )
        return self.job(job_id)

    def claimable(self, owner: str) -> list[str]:
        """Ids of active jobs nobody live holds (for resume and for taking over)."""
        from nbdesk.core.jobs import JobState

        now = self._clock()
        active = [s.value for s in JobState if s.active]
        rows = self._query(
            f"SELECT id, lease_owner, lease_expires FROM jobs WHERE state IN "
            f"({','.join('?' * len(active))}) ORDER BY created_at, rowid",
            active,
        )
        return [
            r["id"] for r in rows
            if r["lease_owner"] is None
            or r["lease_owner"] == owner
            or (r["lease_expires"] is not None and r["lease_expires"] < now)
            or not owner_alive(r["lease_owner"])
        ]

    def heartbeat(self, owner: str, ttl: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET lease_expires = ? WHERE lease_owner = ?",
                (self._clock() + ttl, owner),
            )

    def release(self, owner: str, job_id: str | None = None) -> None:
        with self._write() as conn:
            if job_id is None:
                conn.execute(
                    "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL"
                    " WHERE lease_owner = ?", (owner,),
                )
            else:
                conn.execute(
                    "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL"
                    " WHERE lease_owner = ? AND id = ?", (owner, job_id),
                )

    def remove_job(self, job_id: str) -> None:
        """Forget a finished job (its images stay in the library)."""
        from nbdesk.core.jobs import JobState

        with self._write() as conn:
            conn.execute(
                "DELETE FROM jobs WHERE id = ? AND state IN (?,?,?,?)",
                (job_id, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED,
                 JobState.INTERRUPTED),
            )

    # ------------------------------------------------------------------ files

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

    def complete_job(
        self, job: Job, owner: str, images: Sequence[StoredImage], cost: float | None
    ) -> Job:
        """Insert the images' rows and mark the job completed, in one transaction."""
        from nbdesk.core.jobs import JobState

        now = self._clock()
        with self._write() as conn:
            held = conn.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND lease_owner = ?", (job.id, owner)
            ).fetchone()
            if held is None:
                raise LeaseLost(job.id)
            for img in images:
                conn.execute(
                    "INSERT OR REPLACE INTO items (job_id, idx, path, sha256, size, width,"
                    " height, format, prompt, provider, demo, model, params, refs, cost,"
                    " remote_id, parent_item, created_at, completed_at, turn)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (job.id, img.idx, img.rel_path, img.sha256, img.size, img.width,
                     img.height, img.format, job.prompt, job.provider, int(job.demo), job.model,
                     json.dumps(job.params.to_dict()), json.dumps([r.__dict__ for r in job.refs]),
                     (cost / len(images)) if cost is not None else None, job.remote_id,
                     job.parent_item, job.created_at, now, json.dumps(list(job.turn))),
                )
            failpoint("db.transaction")
            conn.execute(
                "UPDATE jobs SET state = ?, cost = ?, progress = 100, error = NULL,"
                " error_kind = NULL, note = NULL, finished_at = ?, updated_at = ?,"
                " lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                (JobState.COMPLETED.value, cost, now, now, job.id),
            )
        return self.job(job.id)

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

    # ------------------------------------------------------------------ items

    def items_for_job(self, job_id: str) -> list[Item]:
        rows = self._query("SELECT * FROM items WHERE job_id = ? ORDER BY idx", (job_id,))
        return self._items(rows)

    def item(self, item_id: int) -> Item:
        """Raises NotFound (a KeyError: no such item) or UnsafePath (its row names a file outside
        the library)."""
        rows = self._query("SELECT * FROM items WHERE id = ?", (item_id,))
        if not rows:
            raise NotFound(f"image #{item_id}")
        return self._item(rows[0])

    def item_for_path(self, path: Path) -> Item | None:
        """The library item (not in the trash) stored at ``path``, if any."""
        try:
            rel = path.resolve().relative_to(self.root.resolve())
        except (OSError, ValueError):
            return None
        rows = self._query("SELECT * FROM items WHERE path = ? AND deleted_at IS NULL",
                           (rel.as_posix(),))
        found = self._items(rows)
        return found[0] if found else None

    def chain(self, item_id: int, limit: int) -> list[Item]:
        """An item and up to ``limit - 1`` of its ancestors (parent links), oldest first."""
        found: list[Item] = []
        seen: set[int] = set()
        current: int | None = item_id
        while current is not None and current not in seen and len(found) < limit:
            seen.add(current)
            try:
                item = self.item(current)
            except KeyError:
                break
            except UnsafePath as exc:
                self._refused(current, exc)
                break
            found.append(item)
            current = item.parent_item
        return found[::-1]

    def children(self, item_id: int) -> list[int]:
        """Ids of the images made by editing this one, oldest first."""
        rows = self._query(
            "SELECT id FROM items WHERE parent_item = ? AND deleted_at IS NULL"
            " ORDER BY completed_at, id", (item_id,),
        )
        return [r[0] for r in rows]

    def items(
        self,
        *,
        text: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        favourites: bool = False,
        since: float | None = None,
        until: float | None = None,
        trash: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Item]:
        """Library items, newest first, filtered; ``text`` is a full-text query."""
        sql, args = self._item_filter(text, provider, model, favourites, since, until, trash)
        sql = "SELECT items.* " + sql + " ORDER BY items.completed_at DESC, items.id DESC"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return self._items(self._query(sql, args))

    def item_ids(self, **filters: Any) -> list[int]:
        """Only the ids (cheap even for 100,000 items): for models that load lazily."""
        sql, args = self._ids_query(**filters)
        joined = self._query(sql, args)[0][0]
        return list(map(int, joined.split(","))) if joined else []

    @classmethod
    def _ids_query(cls, **filters: Any) -> tuple[str, list[Any]]:
        """The ids in the grid's order, joined in one row: sqlite3 lets go of the GIL
        for every row it steps and waits for it again after each, up to the switch
        interval while another thread runs Python. 10,000 rows took ~50 ms beside a busy
        thread (the window's, as it starts), one row ~8 ms. The aggregate reads its
        ordered subquery in order. SQLite does so, but its documentation promises an
        aggregate's order only from 3.44 (``ORDER BY`` inside the aggregate), which this
        code cannot require: test_item_ids_keep_the_grids_order checks it on the SQLite
        in use."""
        sql, args = cls._item_filter(
            filters.get("text"), filters.get("provider"), filters.get("model"),
            filters.get("favourites", False), filters.get("since"), filters.get("until"),
            filters.get("trash", False),
        )
        return ("SELECT group_concat(id) FROM (SELECT items.id " + sql
                + " ORDER BY items.completed_at DESC, items.id DESC)"), args

    def first_page(self, page_size: int = 120) -> FirstPage:
        """What the library grid shows first (no filters): every id, newest first, and
        the items of the first page. The window reads it on its own thread as it starts."""
        ids = self.item_ids()
        return FirstPage(ids, self.items_by_id(ids[:page_size]))

    def items_by_id(self, ids: Sequence[int]) -> dict[int, Item]:
        out: dict[int, Item] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            rows = self._query(
                f"SELECT * FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
            out.update((i.id, i) for i in self._items(rows))
        return out

    @staticmethod
    def _item_filter(
        text: str | None, provider: str | None, model: str | None, favourites: bool,
        since: float | None, until: float | None, trash: bool,
    ) -> tuple[str, list[Any]]:
        sql = "FROM items"
        where = ["items.deleted_at IS NOT NULL" if trash else "items.deleted_at IS NULL"]
        args: list[Any] = []
        if text and text.strip():
            sql += " JOIN items_fts ON items_fts.rowid = items.id"
            where.append("items_fts MATCH ?")
            args.append(fts_query(text))
        if provider:
            where.append("items.provider = ?")
            args.append(provider)
        if model:
            where.append("items.model = ?")
            args.append(model)
        if favourites:
            where.append("items.favourite = 1")
        if since is not None:
            where.append("items.completed_at >= ?")
            args.append(since)
        if until is not None:
            where.append("items.completed_at < ?")
            args.append(until)
        return sql + " WHERE " + " AND ".join(where), args

    def count_items(self) -> int:
        return int(self._query("SELECT count(*) FROM items WHERE deleted_at IS NULL")[0][0])

    def total_cost(self) -> float:
        return float(self._query("SELECT coalesce(sum(cost), 0) FROM items")[0][0])

    def set_favourite(self, item_id: int, favourite: bool) -> None:
        with self._write() as conn:
            conn.execute("UPDATE items SET favourite = ? WHERE id = ?", (int(favourite), item_id))

    def trash(self, item_ids: Sequence[int]) -> list[int]:
        """Move items' files to the trash folder; returns the ids moved (for undo).
        Raises RowsSkipped (after moving the others) if some rows name a file outside
        the library: those are left alone."""
        moved: list[int] = []
        skipped: list[tuple[int, UnsafePath]] = []
        now = self._clock()
        for row in self._rows_by_id(item_ids):
            if row["deleted_at"] is not None:
                continue
            try:
                src, dest = self.item_file(row["path"]), self.trashed_file(row["path"])
            except UnsafePath as exc:
                self._refused(row["id"], exc)
                skipped.append((row["id"], exc))
                continue
            private_mkdir(dest.parent)
            if src.exists():
                os.replace(src, dest)
            with self._write() as conn:
                conn.execute("UPDATE items SET deleted_at = ? WHERE id = ?", (now, row["id"]))
            moved.append(row["id"])
        if skipped:
            raise RowsSkipped("moved to the trash", skipped, moved)
        return moved

    def restore(self, item_ids: Sequence[int]) -> list[int]:
        """Undo ``trash``: move the files back and show the items again (RowsSkipped as
        ``trash``)."""
        restored: list[int] = []
        skipped: list[tuple[int, UnsafePath]] = []
        for row in self._rows_by_id(item_ids):
            if row["deleted_at"] is None:
                continue
            try:
                dest, src = self.item_file(row["path"]), self.trashed_file(row["path"])
            except UnsafePath as exc:
                self._refused(row["id"], exc)
                skipped.append((row["id"], exc))
                continue
            if src.exists():
                private_mkdir(dest.parent)
                os.replace(src, dest)
            with self._write() as conn:
                conn.execute("UPDATE items SET deleted_at = NULL WHERE id = ?", (row["id"],))
            restored.append(row["id"])
        if skipped:
            raise RowsSkipped("restored", skipped, restored)
        return restored

    def empty_trash(self) -> int:
        """Delete trashed items for good; returns how many. A row that names a file
        outside the library is kept (and its file left alone): RowsSkipped, after the
        others are deleted."""
        deleted: list[int] = []
        skipped: list[tuple[int, UnsafePath]] = []
        for row in self._query("SELECT id, path FROM items WHERE deleted_at IS NOT NULL"):
            try:
                self.trashed_file(row["path"]).unlink(missing_ok=True)
            except UnsafePath as exc:
                self._refused(row["id"], exc)
                skipped.append((row["id"], exc))
                continue
            deleted.append(row["id"])
        with self._write() as conn:
            conn.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in deleted])
        if skipped:
            raise RowsSkipped("deleted", skipped, deleted)
        return len(deleted)

    def _rows_by_id(self, ids: Sequence[int]) -> list[sqlite3.Row]:
        rows: list[sqlite3.Row] = []
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            rows += self._query(
                f"SELECT * FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
        return rows

    def _items(self, rows: Iterable[sqlite3.Row]) -> list[Item]:
        """The items of these rows, leaving out (with a warning) any whose path is not
        inside the library."""
        found: list[Item] = []
        for row in rows:
            try:
                found.append(self._item(row))
            except UnsafePath as exc:
                self._refused(row["id"], exc)
        return found

    def _item(self, row: sqlite3.Row) -> Item:
        digest = row["sha256"]
        if not (isinstance(digest, str) and len(digest) == 64 and _HEX.issuperset(digest)):
            # (the thumbnail cache names its files by it)
            raise UnsafePath(str(digest), "not a SHA-256, and used as a file name")
        return Item(
            id=row["id"], job_id=row["job_id"], idx=row["idx"],
            path=self.item_file(row["path"]),
            sha256=row["sha256"], size=row["size"], width=row["width"], height=row["height"],
            format=row["format"], prompt=row["prompt"], provider=row["provider"],
            demo=bool(row["demo"]), model=row["model"], params=json.loads(row["params"]),
            refs=tuple(RefRecord.from_dict(r) for r in json.loads(row["refs"])),
            cost=row["cost"], remote_id=row["remote_id"], parent_item=row["parent_item"],
            created_at=row["created_at"], completed_at=row["completed_at"],
            favourite=bool(row["favourite"]), deleted_at=row["deleted_at"],
            turn=tuple(json.loads(row["turn"] or "[]")),
        )

    # ------------------------------------------------------------------ checks

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


def fts_query(text: str) -> str:
    """Turn user text into a safe FTS5 query: every word must match (prefix match)."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in text).split() if w]
    return " ".join(f'"{w}"*' for w in words) if words else '""'


def _job(row: sqlite3.Row) -> Job:
    """A job read from its row. (The job classes load here, with the first job read:
    the library grid opens the library and reads its items before any.)"""
    from nbdesk.core.jobs import Job

    return Job.from_row(row)


def _encode(value: Any) -> Any:
    if isinstance(value, enum.Enum):  # a JobState
        return value.value
    if isinstance(value, tuple | list):
        return json.dumps(list(value))
    if isinstance(value, bool):
        return int(value)
    return value


def _split_sql(script: str) -> list[str]:
    """Split a schema script into statements (triggers contain inner semicolons)."""
    statements: list[str] = []
    buf: list[str] = []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and (not joined.upper().startswith("CREATE TRIGGER")
                                     or joined.upper().endswith("END;")):
            statements.append(joined)
            buf = []
    if "".join(buf).strip():
        statements.append("\n".join(buf))
    return statements

