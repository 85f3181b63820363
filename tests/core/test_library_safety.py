"""The library never follows a path out of its folder, explains database errors, and keeps
what it creates private.

Rows are crafted with a second SQLite connection, as a damaged or hostile database file
would hold them; the library is then used through its public calls."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from nbdesk.core.jobs import JobParams, JobSpec, JobState
from nbdesk.core.library import (
    OPEN_BUSY_TIMEOUT,
    DatabaseDamaged,
    DatabaseLocked,
    DatabaseReadOnly,
    Library,
    LibraryError,
    RowsSkipped,
    UnsafePath,
    database_error,
)
from nbdesk.core.paths import Paths
from nbdesk.core.refs import RefRecord
from tests.core.test_library import add_item, paths_in
from tests.helpers import EngineEnv, close_engine

VICTIM = b"the user's file, outside the library"


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Library]:
    library = Library(paths_in(tmp_path))
    yield library
    library.close()


def set_row(lib: Library, item_id: int, **fields: object) -> None:
    """Change an item's row behind the library's back."""
    conn = sqlite3.connect(lib.paths.db)
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE items SET {sets} WHERE id = ?", (*fields.values(), item_id))
    conn.commit()
    conn.close()


def victim(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(VICTIM)
    return path


def crafted(lib: Library, tmp_path: Path) -> dict[str, tuple[int, Path]]:
    """Items whose rows lead out of the library: (item id, the file they lead to)."""
    dotdot = victim(tmp_path / "victim.txt")  # root is tmp_path/home: ../ from trash/ too
    absolute = victim(tmp_path / "elsewhere" / "absolute.txt")
    outside = victim(tmp_path / "elsewhere" / "linked.txt")
    link = lib.paths.images / "2026" / "link.png"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    rows = {"dotdot": ("../../victim.txt", dotdot), "absolute": (str(absolute), absolute),
            "symlink": ("images/2026/link.png", outside)}
    made: dict[str, tuple[int, Path]] = {}
    for name, (rel, target) in rows.items():
        item_id = add_item(lib, f"crafted {name}", name.encode())
        set_row(lib, item_id, path=rel)
        made[name] = (item_id, target)
    return made


def test_inside_refuses_every_way_out(lib: Library, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (lib.paths.images / "dir-link").symlink_to(out, target_is_directory=True)
    (lib.paths.images / "loop").symlink_to(lib.paths.images / "loop")
    for rel in ("../x", "images/../../x", "/etc/passwd", "C:/x.png", "\\\\server\\x",
                "images/dir-link/x.png", "images/loop", "", "images/a\0b"):
        with pytest.raises(UnsafePath):
            lib.inside(rel)
    assert lib.inside("images/2026/01/a.png") == lib.root / "images/2026/01/a.png"
    with pytest.raises(UnsafePath):  # an item's file is under images/, not the database
        lib.item_file("library.sqlite3")
    with pytest.raises(UnsafePath):
        lib.ref_file("images/x.png")


def test_empty_trash_deletes_nothing_outside_and_names_the_bad_rows(
    lib: Library, tmp_path: Path
) -> None:
    good = add_item(lib, "a good image", b"good")
    bad = crafted(lib, tmp_path)
    # A symlinked folder in the trash: deleting through it would reach outside.
    outside_dir = tmp_path / "elsewhere" / "dir"
    target = victim(outside_dir / "x.png")
    (lib.paths.trash / "images").mkdir(parents=True)
    (lib.paths.trash / "images" / "linked").symlink_to(outside_dir, target_is_directory=True)
    via_dir = add_item(lib, "crafted dir", b"dir")
    set_row(lib, via_dir, path="images/linked/x.png")
    lib.trash([good])
    now = time.time()
    for item_id, _ in bad.values():
        set_row(lib, item_id, deleted_at=now)
    set_row(lib, via_dir, deleted_at=now)

    with pytest.raises(RowsSkipped) as caught:
        lib.empty_trash()

    for _, path in bad.values():
        assert path.read_bytes() == VICTIM
    assert target.read_bytes() == VICTIM
    skipped = {item_id for item_id, _ in caught.value.skipped}
    assert skipped == {i for i, _ in bad.values()} | {via_dir}
    assert caught.value.done == [good]  # the good one went, for good
    assert "outside the library" in str(caught.value)
    assert isinstance(caught.value, LibraryError)  # shown as the CLI and the window show those


def test_trash_and_restore_move_nothing_outside(lib: Library, tmp_path: Path) -> None:
    good = add_item(lib, "a good image", b"good")
    bad = crafted(lib, tmp_path)
    ids = [good, *(i for i, _ in bad.values())]
    with pytest.raises(RowsSkipped) as caught:
        lib.trash(ids)
    assert caught.value.done == [good]
    for _, path in bad.values():
        assert path.read_bytes() == VICTIM
    assert not list(lib.paths.trash.rglob("*.txt"))

    now = time.time()
    for item_id, _ in bad.values():
        set_row(lib, item_id, deleted_at=now)
    with pytest.raises(RowsSkipped) as restored:
        lib.restore(ids)
    assert restored.value.done == [good]
    assert lib.item(good).path.read_bytes() == b"good"
    for _, path in bad.values():
        assert path.read_bytes() == VICTIM


def test_verify_reads_nothing_outside_and_reports_the_bad_rows(
    lib: Library, tmp_path: Path
) -> None:
    bad = crafted(lib, tmp_path)
    problems = lib.verify()
    for name, (item_id, _) in bad.items():
        assert any(p.startswith(f"item {item_id}: skipped") for p in problems), (name, problems)
    assert any("symlink out of the library" in p for p in problems)
    assert not any("SHA-256" in p for p in problems)  # no outside file was hashed


def test_bad_rows_are_left_out_of_listings_and_refused_by_id(
    lib: Library, tmp_path: Path
) -> None:
    good = add_item(lib, "a good image", b"good")
    bad = crafted(lib, tmp_path)
    assert [i.id for i in lib.items()] == [good]
    assert list(lib.items_by_id([good, *(i for i, _ in bad.values())])) == [good]
    for item_id, _ in bad.values():
        with pytest.raises(UnsafePath):
            lib.item(item_id)


def test_a_row_whose_digest_is_not_one_is_refused(lib: Library) -> None:
    """The thumbnail cache names its files by an item's SHA-256: "../../x" is no digest."""
    good = add_item(lib, "a good image", b"good")
    bad = add_item(lib, "crafted digest", b"bad")
    set_row(lib, bad, sha256="../../../../outside")
    assert [i.id for i in lib.items()] == [good]
    with pytest.raises(UnsafePath, match="not a SHA-256"):
        lib.item(bad)


def test_a_job_id_that_leads_out_of_tmp_is_refused(lib: Library, tmp_path: Path) -> None:
    keep = victim(tmp_path / "home" / "x-1.part")  # tmp/../x-1.part
    with pytest.raises(UnsafePath):
        lib.tmp_path("../x", 1)
    with pytest.raises(UnsafePath):
        lib.clear_tmp("../x")
    assert keep.read_bytes() == VICTIM


def test_remove_unrecorded_images_follows_no_symlink(lib: Library, tmp_path: Path) -> None:
    owner = "test:1:x"
    (job,) = lib.add_jobs(JobSpec("apiframe", "nano-banana", "p", JobParams("1:1")), [], 1,
                          owner)
    name = lib.root / lib.image_rel_path(job, 0, "png")
    name.parent.mkdir(parents=True)
    target = victim(tmp_path / "elsewhere" / "v.png")
    name.symlink_to(target)
    assert lib.placed_file(job, 0, "0" * 64) is None
    lib.remove_unrecorded_images(job)
    assert target.read_bytes() == VICTIM  # the link went, not what it points at
    assert not name.is_symlink()


# ---------------------------------------------------------------------- database errors

HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.read()
"""


def hold_lock(db: Path, name: str | None = None) -> subprocess.Popen[str]:
    """Another process (a Python running sqlite3, as a database shell would; or one whose
    command line reads ``name``) holding the database's write lock until its stdin
    closes."""
    proc = subprocess.Popen([name or sys.executable, "-c", HOLD, str(db)],
                            executable=sys.executable, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    proc.communicate(timeout=10)


def test_a_locked_database_says_so_and_who_holds_it_within_seconds(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    Library(paths).close()
    holder = hold_lock(paths.db)
    try:
        lib = Library(paths)  # reading is not blocked (WAL)
        started = time.monotonic()
        with pytest.raises(DatabaseLocked) as caught:
            lib.add_jobs(JobSpec("apiframe", "nano-banana", "p", JobParams("1:1")), [], 1)
        elapsed = time.monotonic() - started
        lib.close()
    finally:
        release(holder)
    message = str(caught.value)
    assert elapsed < OPEN_BUSY_TIMEOUT + 2, elapsed
    assert "is locked by another program (python" in message, message
    assert f"pid {holder.pid}" in message
    assert "close it, then try again" in message
    assert "backup" in message and "damaged" not in message


def test_a_lock_held_by_another_nbdesk_is_named_so(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    lib = Library(paths)
    holder = hold_lock(paths.db, name="/opt/nbdesk/nbdesk")  # as the bundle's command line
    try:
        with pytest.raises(DatabaseLocked) as caught:
            lib.add_jobs(JobSpec("apiframe", "nano-banana", "p", JobParams("1:1")), [], 1)
    finally:
        release(holder)
        lib.close()
    assert f"locked by another nbdesk (pid {holder.pid})" in str(caught.value)
    assert "wait for it to finish, or close it" in str(caught.value)


def test_a_damaged_database_is_the_only_one_called_damaged(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    paths.root.mkdir(parents=True)
    paths.db.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    with pytest.raises(DatabaseDamaged, match=r"damaged.*restore it from a backup"):
        Library(paths)


def test_the_mapping_of_sqlite_errors(tmp_path: Path) -> None:
    db = tmp_path / "library.sqlite3"
    db.touch()
    readonly = sqlite3.OperationalError("attempt to write a readonly database")
    readonly.sqlite_errorcode = 8  # type: ignore[attr-defined]
    assert isinstance(database_error(readonly, db), DatabaseReadOnly)
    notadb = sqlite3.DatabaseError("file is not a database")
    notadb.sqlite_errorcode = 26  # type: ignore[attr-defined]
    assert isinstance(database_error(notadb, db), DatabaseDamaged)
    # still sqlite3 errors for code that catches those (the engine's storage failure)
    assert isinstance(database_error(readonly, db), sqlite3.OperationalError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes; the "
                    "read-only case runs as root in tests/e2e/test_cli_storage.py "
                    "(a read-only mount)")
def test_a_read_only_database_says_so_not_damaged(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    lib = Library(paths)
    add_item(lib, "before", b"x")
    lib.close()
    for p in paths.root.iterdir():
        if p.is_file():
            p.chmod(0o444)
    paths.root.chmod(0o555)
    try:
        with pytest.raises(DatabaseReadOnly, match=r"read-only.*check the folder's permissions"):
            opened = Library(paths)
            opened.add_jobs(JobSpec("apiframe", "nano-banana", "p", JobParams("1:1")), [], 1)
    finally:
        paths.root.chmod(0o700)


# ---------------------------------------------------------------------- permissions

def test_what_the_library_makes_is_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        home = tmp_path / "home"
        home.mkdir(mode=0o755)
        home.chmod(0o755)
        lib = Library(Paths.resolve({"NBDESK_HOME": str(home)}))
        add_item(lib, "an image", b"img")
        lib.import_ref(b"a reference", "png")
        lib.close()
    finally:
        os.umask(previous)
    assert home.stat().st_mode & 0o777 == 0o755  # the user's own folder: left alone
    for path in home.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_an_older_librarys_folders_and_database_are_made_private(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    Library(paths).close()
    for folder in paths.library_dirs[1:]:
        folder.chmod(0o755)
    paths.db.chmod(0o644)
    Library(paths).close()
    for folder in paths.library_dirs[1:]:
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert paths.db.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------- the engine


@pytest.mark.anyio
async def test_a_reference_row_leading_out_is_never_read_nor_sent(
    engine_env: EngineEnv, tmp_path: Path
) -> None:
    """A job whose reference record names a file outside the library (a crafted row) fails
    before anything is sent: the file outside is not read into a request."""
    secret = tmp_path / "secret.png"  # a real image (sent, were it read); library: home/
    Image.new("RGB", (32, 32), (200, 10, 10)).save(secret, "PNG")
    data = secret.read_bytes()
    ref = RefRecord(source="holiday.png", kind="file", path="../secret.png",
                    sha256=hashlib.sha256(data).hexdigest(), mime="image/png")
    spec = JobSpec(provider="apiframe", model="nano-banana", prompt="a red bicycle")
    (job,) = engine_env.library.add_jobs(spec, [ref], 1)
    engine = engine_env.engine()
    try:
        await engine.start()
        (done,) = await engine.wait([job.id])
    finally:
        await close_engine(engine)
    assert done.state is JobState.FAILED
    assert "outside the library folder" in (done.error or ""), done.error
    assert engine_env.sim.stats.requests == 0
    assert secret.read_bytes() == data


@pytest.mark.parametrize("crafted", ["../../outside", "*", "a/b", "x" * 65])
def test_a_crafted_job_id_names_no_file_and_globs_nothing(
        tmp_path: Path, crafted: str) -> None:
    """A job id is part of the temp files' names: one with a path or a wildcard in it
    (only a crafted row holds one) is refused, and other jobs' kept answers survive."""
    from nbdesk.core import answers
    from nbdesk.core.library import Library, UnsafePath
    from nbdesk.core.paths import Paths

    library = Library(Paths.resolve({"NBDESK_HOME": str(tmp_path / "home")}))
    try:
        library.keep_answer("0f6c0d8e-real-job", [b"a paid image"])
        outside = tmp_path / "outside-0.answer"
        outside.write_bytes(b"not the library's")
        for call in (library.clear_answer, library.clear_tmp):
            with pytest.raises(UnsafePath):
                call(crafted)
        with pytest.raises(UnsafePath):
            library.answer_path(crafted, 0)
        with pytest.raises(ValueError, match="not a job id"):
            answers.drop(crafted)
        assert library.answer_path("0f6c0d8e-real-job", 0).read_bytes() == b"a paid image"
        assert outside.read_bytes() == b"not the library's"
    finally:
        library.close()
