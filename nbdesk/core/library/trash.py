"""The trash: deleting moves an image's file to trash/ and marks its row, which can be
undone until the trash is emptied."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from nbdesk.core.library.errors import RowsSkipped, UnsafePath
from nbdesk.core.library.safety import Folder
from nbdesk.core.library.store import Store
from nbdesk.core.paths import private_mkdir


class Trash(Store, Folder):
    """Moving items to the trash and back, and emptying it (a part of ``Library``)."""

    def trash(self, item_ids: Sequence[int]) -> list[int]:
        """Move items' files to the trash folder; returns the ids moved (for undo).
        Raises RowsSkipped (after moving the others) if some rows name a file outside
        the library: those are left alone."""
        moved: list[int] = []
        skipped: list[tuple[int, UnsafePath]] = []
        now = self._clock()
        for item_id, src, dest in self._movable(item_ids, False, skipped):
            private_mkdir(dest.parent)
            if src.exists():
                os.replace(src, dest)
            with self._write() as conn:
                conn.execute("UPDATE items SET deleted_at = ? WHERE id = ?", (now, item_id))
            moved.append(item_id)
        if skipped:
            raise RowsSkipped("moved to the trash", skipped, moved)
        return moved

    def restore(self, item_ids: Sequence[int]) -> list[int]:
        """Undo ``trash``: move the files back and show the items again (RowsSkipped as
        ``trash``)."""
        restored: list[int] = []
        skipped: list[tuple[int, UnsafePath]] = []
        for item_id, dest, src in self._movable(item_ids, True, skipped):
            if src.exists():
                private_mkdir(dest.parent)
                os.replace(src, dest)
            with self._write() as conn:
                conn.execute("UPDATE items SET deleted_at = NULL WHERE id = ?", (item_id,))
            restored.append(item_id)
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

    def _movable(
        self, item_ids: Sequence[int], trashed: bool, skipped: list[tuple[int, UnsafePath]]
    ) -> Iterator[tuple[int, Path, Path]]:
        """Those of the items in the trash (``trashed``) or out of it: each one's id, its
        image's file and where that is while in the trash. An item whose row names a file
        outside the library is left out, into ``skipped`` (and warned about once)."""
        for row in self._rows_by_id(item_ids):
            if (row["deleted_at"] is not None) != trashed:
                continue
            try:
                live, in_trash = self.item_file(row["path"]), self.trashed_file(row["path"])
            except UnsafePath as exc:
                self._refused(row["id"], exc)
                skipped.append((row["id"], exc))
                continue
            yield row["id"], live, in_trash

    def _rows_by_id(self, ids: Sequence[int]) -> list[sqlite3.Row]:
        rows: list[sqlite3.Row] = []
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            rows += self._query(
                f"SELECT * FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
        return rows
