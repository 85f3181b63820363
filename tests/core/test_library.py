"""The SQLite library: schema, migrations, refusal to touch what it cannot read, trash."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from nbdesk.core.jobs import JobParams, JobSpec, JobState
from nbdesk.core.library import (
    SCHEMA_VERSION,
    DatabaseDamaged,
    Library,
    LibraryError,
    fts_query,
    make_owner,
    owner_alive,
)
from nbdesk.core.paths import Paths


def paths_in(tmp_path: Path) -> Paths:
    return Paths.resolve({"NBDESK_HOME": str(tmp_path / "home")})


def add_item(lib: Library, prompt: str, data: bytes = b"img") -> int:
    """A completed job with one stored image, through the same calls the engine makes."""
    owner = make_owner()
    (job,) = lib.add_jobs(JobSpec("apiframe", "nano-banana", prompt, JobParams("1:1")), [], 1,
                          owner)
    job = lib.update_job(job.id, owner, remote_id="r-" + job.id[:4])
    tmp = lib.tmp_path(job.id, 0)
    tmp.write_bytes(data)
    stored = lib.place_image(job, 0, tmp, sha256=hashlib.sha256(data).hexdigest(),
                             size=len(data), width=4, height=4, fmt="png", ext="png")
    lib.complete_job(job, owner, [stored], 0.04)
    return lib.items_for_job(job.id)[0].id


def test_new_library_is_wal_at_the_current_schema(tmp_path: Path) -> None:
    lib = Library(paths_in(tmp_path))
    conn = sqlite3.connect(lib.paths.db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    lib.close()
    Library(paths_in(tmp_path)).close()  # reopening migrates nothing and works


def test_newer_library_is_refused_and_left_untouched(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    Library(paths).close()
    conn = sqlite3.connect(paths.db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    before = paths.db.read_bytes()
    with pytest.raises(LibraryError, match="newer nbdesk"):
        Library(paths)
    assert paths.db.read_bytes() == before


def test_corrupted_library_is_refused_and_left_untouched(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    paths.root.mkdir(parents=True)
    paths.db.write_bytes(b"this is not a database at all" * 100)
    before = paths.db.read_bytes()
    with pytest.raises(DatabaseDamaged, match=r"is damaged \(file is not a database"):
        Library(paths)
    assert paths.db.read_bytes() == before


def test_full_text_search_ranks_nothing_it_should_not(tmp_path: Path) -> None:
    lib = Library(paths_in(tmp_path))
    a = add_item(lib, "A red bicycle leaning on a wall", b"a")
    b = add_item(lib, "Café au lait, très chaud", b"b")
    add_item(lib, "a snowy mountain", b"c")
    assert [i.id for i in lib.items(text="bicycle")] == [a]
    assert [i.id for i in lib.items(text="bicy")] == [a]  # prefix
    assert [i.id for i in lib.items(text="cafe tres")] == [b]  # diacritics folded
    assert lib.items(text='"; DROP TABLE items; --') == []  # quoting is safe
    assert len(lib.items(text="")) == 3
    assert fts_query("  ") == '""'
    lib.close()


def test_trash_and_undo_move_files_and_back(tmp_path: Path) -> None:
    lib = Library(paths_in(tmp_path))
    item_id = add_item(lib, "keep me", b"precious")
    item = lib.item(item_id)
    assert lib.trash([item_id]) == [item_id]
    assert not item.path.exists() and lib.items() == []
    assert [i.id for i in lib.items(trash=True)] == [item_id]
    assert lib.verify() == []
    assert lib.restore([item_id]) == [item_id]
    assert item.path.read_bytes() == b"precious" and [i.id for i in lib.items()] == [item_id]
    lib.trash([item_id])
    assert lib.empty_trash() == 1 and lib.items(trash=True) == []
    lib.close()


def test_verify_finds_missing_changed_and_stray_files(tmp_path: Path) -> None:
    lib = Library(paths_in(tmp_path))
    first = lib.item(add_item(lib, "one", b"1"))
    second = lib.item(add_item(lib, "two", b"2"))
    first.path.unlink()
    second.path.write_bytes(b"tampered")
    (lib.paths.images / "stray.png").write_bytes(b"x")
    problems = "\n".join(lib.verify())
    assert "file missing" in problems and "SHA-256 mismatch" in problems
    assert "stray file" in problems
    lib.close()


def test_lease_is_exclusive_until_released_or_expired(tmp_path: Path) -> None:
    now = [1000.0]
    lib = Library(paths_in(tmp_path), clock=lambda: now[0])
    (job,) = lib.add_jobs(JobSpec("apiframe", "nano-banana", "x"), [], 1)
    other_host = "elsewhere:123:abc"
    assert lib.claim(job.id, other_host, ttl=30) is not None
    assert lib.claim(job.id, make_owner(), ttl=30) is None
    now[0] += 31
    mine = make_owner()
    assert lib.claim(job.id, mine, ttl=30) is not None
    lib.update_job(job.id, mine, state=JobState.SUBMITTING)
    lib.release(mine)
    assert lib.job(job.id).lease_owner is None
    lib.close()


def test_dead_owner_on_this_host_frees_its_lease_at_once(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"{socket.gethostname()}:{proc.pid}:x"
    assert not owner_alive(dead)
    assert owner_alive(make_owner())
    lib = Library(paths_in(tmp_path))
    (job,) = lib.add_jobs(JobSpec("apiframe", "nano-banana", "x"), [], 1, dead, ttl=3600)
    assert lib.claimable(make_owner()) == [job.id]
    lib.close()


def test_a_second_connection_sees_changes_through_data_version(tmp_path: Path) -> None:
    a = Library(paths_in(tmp_path))
    b = Library(paths_in(tmp_path))
    before = a.data_version()
    b.add_jobs(JobSpec("apiframe", "nano-banana", "x"), [], 1)
    assert a.data_version() != before
    assert len(a.jobs()) == 1
    a.close()
    b.close()


def test_a_version_1_library_migrates_and_keeps_everything(tmp_path: Path) -> None:
    """A library written before conversational editing (schema 1) opens, gains the turn
    columns and the parent index, and keeps its jobs, items and search."""
    from nbdesk.core.library import _SCHEMA_V1, _split_sql

    paths = paths_in(tmp_path)
    paths.ensure()
    conn = sqlite3.connect(paths.db)
    for statement in _split_sql(_SCHEMA_V1):
        conn.execute(statement)
    conn.execute(
        "INSERT INTO jobs (id, idem_key, created_at, updated_at, provider, model, prompt,"
        " state) VALUES ('j1', 'j1', 1, 1, 'apiframe', 'nano-banana', 'an old fox',"
        " 'completed')")
    conn.execute(
        "INSERT INTO items (id, job_id, path, sha256, size, width, height, format, prompt,"
        " provider, model, created_at, completed_at) VALUES (7, 'j1', 'images/a.png', '"
        + "a" * 64 + "',"
        " 1, 4, 4, 'png', 'an old fox', 'apiframe', 'nano-banana', 1, 2)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    lib = Library(paths)
    try:
        conn = sqlite3.connect(paths.db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(items)")}
        conn.close()
        assert {"items_parent", "items_live_order"} <= indexes
        job = lib.job("j1")
        assert (job.prompt, job.state, job.turn) == ("an old fox", JobState.COMPLETED, ())
        item = lib.item(7)
        assert (item.prompt, item.turn, item.signatures, item.parent_item) == (
            "an old fox", (), [], None)
        assert [i.id for i in lib.items(text="fox")] == [7]
        assert lib.chain(7, 5) == [item] and lib.children(7) == []
    finally:
        lib.close()


def test_the_grids_index_is_added_without_raising_the_schema_version(tmp_path: Path) -> None:
    """A library from before the grid's index gains it on opening, and stays at the
    schema version an older nbdesk knows (so that one still opens it)."""
    paths = paths_in(tmp_path)
    Library(paths).close()
    conn = sqlite3.connect(paths.db)
    conn.execute("DROP INDEX items_live_order")
    conn.commit()
    conn.close()
    Library(paths).close()
    conn = sqlite3.connect(paths.db)
    try:
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(items)")}
        assert "items_live_order" in indexes
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    finally:
        conn.close()


def test_the_grids_ids_are_read_in_the_order_of_their_own_index(tmp_path: Path) -> None:
    """The grid's order (every opening and reload of the grid reads it): SQLite scans
    the live-items index in order, with no sort and no trashed rows to skip."""
    lib = Library(paths_in(tmp_path))
    try:
        sql, args = Library._ids_query()
        plan = " ".join(str(r[3]) for r in lib._conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "INDEX items_live_order" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        lib.close()


def test_item_ids_keep_the_grids_order(tmp_path: Path) -> None:
    """item_ids reads the ids joined in one row; they come in the grid's order (newest
    first, the larger id first on a tie), filtered as the items themselves are."""
    import random

    lib = Library(paths_in(tmp_path))
    try:
        ids = [add_item(lib, f"{'red' if n % 3 else 'blue'} cat {n}") for n in range(60)]
        rng = random.Random(7)
        moments = [1_700_000_000.0 + rng.randrange(20) for _ in ids]  # ties, out of order
        when = dict(zip(ids, moments, strict=True))
        with lib._write() as conn:
            conn.executemany("UPDATE items SET completed_at = ?, favourite = ? WHERE id = ?",
                             [(when[i], n % 4 == 0, i) for n, i in enumerate(ids)])
            conn.executemany("UPDATE items SET provider = 'apifree', model = ? WHERE id = ?",
                             [("google/nano-banana-pro", i) for i in ids[::5]])
        expected = sorted(ids, key=lambda i: (when[i], i), reverse=True)
        assert lib.item_ids() == expected == [i.id for i in lib.items()]
        for filters in ({"text": "blue"}, {"favourites": True}, {"provider": "apifree"},
                        {"model": "nano-banana", "text": "red"},
                        {"since": 1_700_000_005.0, "until": 1_700_000_012.0}):
            assert lib.item_ids(**filters), filters  # (each filter keeps some)
            assert lib.item_ids(**filters) == [i.id for i in lib.items(**filters)], filters
        lib.trash(expected[:5])
        assert lib.item_ids() == expected[5:]
        assert lib.item_ids(trash=True) == [i.id for i in lib.items(trash=True)] == expected[:5]
        assert lib.item_ids(text="no such word") == []
    finally:
        lib.close()


def test_turns_are_kept_beside_the_item_and_not_searched(tmp_path: Path) -> None:
    lib = Library(paths_in(tmp_path))
    try:
        owner = make_owner()
        spec = JobSpec("gemini", "gemini-3-pro-image-preview", "a blue whale")
        (parent,) = lib.add_jobs(spec, [], 1, owner)
        turn = ({"text": "unsearchable-word", "sig": "s-text"}, {"image": 0, "sig": "s-img"},
                {"image": 1, "sig": "s-other"})
        job = lib.update_job(parent.id, owner, turn=turn)
        tmp = lib.tmp_path(job.id, 0)
        tmp.write_bytes(b"data")
        stored = lib.place_image(job, 0, tmp, sha256=hashlib.sha256(b"data").hexdigest(),
                                 size=4, width=4, height=4, fmt="png", ext="png")
        lib.complete_job(job, owner, [stored], None)
        (item,) = lib.items_for_job(job.id)
        assert item.turn == turn
        assert item.signatures == ["s-text", "s-img"]  # not the other image's
        assert item.answer_text == "unsearchable-word"
        assert lib.items(text="unsearchable") == [] and lib.items(text="whale") == [item]
        (child,) = lib.add_jobs(JobSpec("gemini", spec.model, "edit", parent_item=item.id),
                                [], 1)
        assert child.parent_item == item.id
    finally:
        lib.close()
