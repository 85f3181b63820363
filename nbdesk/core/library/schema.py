"""The library database's schema: its versions, the migrations between them (by
``PRAGMA user_version``) and the indexes an older nbdesk can ignore."""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger("nbdesk.core.library")

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


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring the schema from ``version`` to ``SCHEMA_VERSION``, one transaction a step."""
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


def add_extra_indexes(conn: sqlite3.Connection) -> None:
    for statement in EXTRA_INDEXES:
        try:
            conn.execute(statement)
        except sqlite3.OperationalError as exc:  # (read-only, locked: slower, not wrong)
            log.warning("library index not made (%s): %s", exc, statement)


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
