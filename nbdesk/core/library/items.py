"""Items (the library's images) and finding them: by id, by job, by edit chain, and the
grid's filtered, full-text searched, newest-first lists."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdesk.core.library.errors import NotFound, UnsafePath
from nbdesk.core.library.safety import Folder
from nbdesk.core.library.store import Store
from nbdesk.core.refs import RefRecord

_HEX = frozenset("0123456789abcdef")


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



class ItemStore(Store, Folder):
    """Reading items and searching them (a part of ``Library``)."""

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


def fts_query(text: str) -> str:
    """Turn user text into a safe FTS5 query: every word must match (prefix match)."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in text).split() if w]
    return " ".join(f'"{w}"*' for w in words) if words else '""'
