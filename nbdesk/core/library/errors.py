"""What goes wrong in the library, as the user is told it: typed ``LibraryError``s
(``str()`` is user-facing), and ``LeaseLost`` for the engine."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


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
