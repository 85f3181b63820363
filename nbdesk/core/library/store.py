"""The library's database connection: opened (WAL, migrated), one connection behind a
lock, shared by every thread (the engine and the window call from worker threads, never
the GUI thread); writes are ``BEGIN IMMEDIATE`` transactions, and SQLite's errors reach
callers as typed ``LibraryError``s."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nbdesk.core.library.diagnosis import database_error
from nbdesk.core.library.errors import LibraryError
from nbdesk.core.library.schema import SCHEMA_VERSION, add_extra_indexes, migrate
from nbdesk.core.paths import PRIVATE_FILE, Paths

log = logging.getLogger("nbdesk.core.library")

#: How long opening the library, and its first write, wait for another process's write
#: lock before saying who holds it (a person is waiting); later writes wait longer (an
#: engine's transactions beside another nbdesk's are short; a backup tool's may not be).
OPEN_BUSY_TIMEOUT = 3.0
BUSY_TIMEOUT = 15.0


def _create_private(path: Path) -> None:
    """Create an empty file only its owner may read (an empty file is an empty SQLite
    database), unless it exists."""
    if path.exists():
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))



class Store:
    """The connection part of ``Library`` (which sets these attributes up)."""

    paths: Paths
    _clock: Any
    _lock: threading.RLock
    _settled: bool  # a write went through: later writes wait longer for locks
    _first_attempt: float | None
    _conn: sqlite3.Connection

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
            migrate(conn, version)
            add_extra_indexes(conn)
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
