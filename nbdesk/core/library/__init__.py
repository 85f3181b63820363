"""The local library: SQLite (WAL, migrations by ``PRAGMA user_version``) plus image files.

Files are written to a temp name, fsynced and renamed into place before the row that
names them is committed; the row and the job's ``completed`` state go in one
transaction. Deleting moves files to the trash folder and can be undone.

All methods are synchronous and thread-safe (one connection behind a lock); the
engine and the window call them from a worker thread, never the GUI thread.

``Library`` is one object made of a part per idea, each its own module: the connection
(``store``), path safety (``safety``), jobs and leases (``jobstore``), items and search
(``items``), files in place and in tmp/ (``files``), the trash (``trash``). The parts are
mixins over the same state (one connection, one lock, one folder) rather than objects
the library forwards to: every caller, in the engine, the window, the command line and
the tests, keeps the one ``Library`` and its method names, and no part repeats another's
signatures.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from nbdesk.core.library.diagnosis import database_error, lock_holder
from nbdesk.core.library.errors import (
    DatabaseDamaged,
    DatabaseFull,
    DatabaseLocked,
    DatabaseProblem,
    DatabaseReadOnly,
    LeaseLost,
    LibraryError,
    NotFound,
    RowsSkipped,
    UnsafePath,
)
from nbdesk.core.library.files import FileStore, StoredImage, sha256_file, sha256_hex
from nbdesk.core.library.items import FirstPage, Item, ItemStore, fts_query
from nbdesk.core.library.jobstore import JobStore
from nbdesk.core.library.owners import make_owner, owner_alive
from nbdesk.core.library.schema import (
    _SCHEMA_V1,
    _SCHEMA_V2,
    EXTRA_INDEXES,
    MIGRATIONS,
    SCHEMA_VERSION,
    _split_sql,
)
from nbdesk.core.library.store import BUSY_TIMEOUT, OPEN_BUSY_TIMEOUT
from nbdesk.core.library.trash import Trash
from nbdesk.core.paths import Paths

__all__ = [
    "BUSY_TIMEOUT", "EXTRA_INDEXES", "MIGRATIONS", "OPEN_BUSY_TIMEOUT", "SCHEMA_VERSION",
    "_SCHEMA_V1", "_SCHEMA_V2", "DatabaseDamaged", "DatabaseFull", "DatabaseLocked",
    "DatabaseProblem", "DatabaseReadOnly", "FirstPage", "Item", "LeaseLost", "Library",
    "LibraryError", "NotFound", "RowsSkipped", "StoredImage", "UnsafePath", "_split_sql",
    "database_error", "fts_query", "lock_holder", "make_owner", "owner_alive",
    "sha256_file", "sha256_hex",
]


class Library(JobStore, ItemStore, FileStore, Trash):
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
