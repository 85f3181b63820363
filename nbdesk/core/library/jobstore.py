"""Jobs and their leases: a job's row from queued to completed, and which process may
work on it (a lease, taken over when it expires or its owner is dead)."""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from nbdesk.core.failpoints import failpoint
from nbdesk.core.library.errors import LeaseLost, NotFound
from nbdesk.core.library.files import StoredImage
from nbdesk.core.library.owners import owner_alive
from nbdesk.core.library.store import Store
from nbdesk.core.refs import RefRecord

if TYPE_CHECKING:  # the job classes load with the first job read or written: the
    # library grid opens the library and reads its items before any is
    from nbdesk.core.jobs import Job, JobSpec, JobState

#: UPDATE ... RETURNING (SQLite 3.35+)
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


class JobStore(Store):
    """Jobs' rows and leases (a part of ``Library``)."""

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
