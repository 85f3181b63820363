"""Job states, the parameters a user asks for, and the persisted job record."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from nbdesk.core.refs import RefRecord


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def active(self) -> bool:
        """Work remains that the engine does without asking the user."""
        return self in ACTIVE

    @property
    def finished(self) -> bool:
        return self in FINISHED


ACTIVE = frozenset(
    {JobState.QUEUED, JobState.SUBMITTING, JobState.SUBMITTED, JobState.RUNNING,
     JobState.DOWNLOADING}
)
#: Nothing more happens to these without the user (interrupted waits for a retry).
FINISHED = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}
)
RETRYABLE = frozenset({JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED})

#: The most images one queueing may ask for (the CLI's ``--count``, the window's spin
#: box): one job, and one payment, each.
MAX_COUNT = 16

#: A job's note while its submit cannot leave the machine (DNS failure, connection
#: refused, no route): it is back in ``queued``, not interrupted, and is sent when the
#: network is back, or fails as "offline" at the job timeout. The window says it once.
OFFLINE_NOTE = "offline — waiting for the network"

class ErrorKind(enum.StrEnum):
    """Why a job failed (its ``error_kind``). A StrEnum: it is stored, printed as JSON and
    compared as its plain text, so the database and the CLI's output keep their words.
    The provider clients' ``ApiError.kind`` (``api/`` may not import ``core``) are the
    first group: each has a member here (a test checks)."""

    # What a provider call raised (nbdesk.api.base's ApiError subclasses).
    ERROR = "error"  # ApiError itself: a provider error of no finer kind
    BAD_INPUT = "bad_input"  # the request broke a rule of the model: nothing sent
    AUTH = "auth"  # the key was refused
    BAD_REQUEST = "bad_request"  # the provider refused the request as malformed
    TRANSIENT = "transient"  # a failure worth trying again (retries ran out)
    RATE_LIMITED = "rate_limited"
    PROVIDER_FAILED = "provider_failed"  # the provider ran the job and failed it
    PROTOCOL = "protocol"  # an answer nbdesk could not read
    UNANSWERED = "unanswered"  # a submit that may or may not have been taken (and paid)
    # What the engine decides.
    CONFIG = "config"  # the provider cannot be used as set up (no key, bad base URL)
    OFFLINE = "offline"  # the network stayed away until the job's time ran out
    TIMEOUT = "timeout"  # the job's time ran out with the provider
    LOST = "lost"  # the answer of a synchronous call was lost: only a new call helps
    BAD_IMAGE = "bad_image"  # a synchronous answer held no usable image
    DOWNLOAD = "download"  # the provider's image could not be fetched or was unusable
    STORAGE = "storage"  # the library's folder or database could not be written
    INTERNAL = "internal"  # a bug in nbdesk

    @classmethod
    def of(cls, api_kind: str) -> ErrorKind:
        """The kind of a provider client's error (``ApiError.kind``); a kind this table
        does not know yet is the plain ERROR, never a failure of its own."""
        try:
            return cls(api_kind)
        except ValueError:
            return cls.ERROR

#: Failure kinds that prove a submit was refused or never left the machine: nothing was
#: taken on, so sending it now is the job's first (and only) payment.
NOT_SENT_KINDS = frozenset({
    ErrorKind.BAD_INPUT, ErrorKind.CONFIG, ErrorKind.AUTH, ErrorKind.BAD_REQUEST,
    ErrorKind.OFFLINE,
})


class RetryPlan(enum.StrEnum):
    """What Retry does with a job: the one rule, read by the engine, the CLI and the window.

    CONTINUE  the provider has the job (a remote id) or its answer is kept on disk: poll,
              download, store. No new payment, whatever the job failed of.
    SUBMIT    the job never reached the provider (or the provider dedups by our
              idempotency key, which is kept): sent now, paid once.
    RESUBMIT  the provider may have taken (and billed) it already, or ran it and failed it:
              a new paid submission, which the user is asked about first.
    """

    CONTINUE = "continue"
    SUBMIT = "submit"
    RESUBMIT = "resubmit"

    @property
    def paid(self) -> bool:
        return self is not RetryPlan.CONTINUE


def retry_plan(job: Job, *, synchronous: bool, idempotent: bool) -> RetryPlan:
    """How a retry of ``job`` goes (see RetryPlan); ``synchronous`` and ``idempotent``
    are the provider's (its capability table row)."""
    if job.error_kind == ErrorKind.PROVIDER_FAILED:
        return RetryPlan.RESUBMIT  # the provider ran it and failed it: nothing to fetch
    if synchronous:
        if job.result_urls and job.error_kind != ErrorKind.LOST:
            return RetryPlan.CONTINUE  # the answer is kept on disk
    elif job.remote_id:
        return RetryPlan.CONTINUE  # a remote id is never submitted again
    if job.state is JobState.INTERRUPTED or job.error_kind == ErrorKind.LOST:
        return RetryPlan.RESUBMIT
    if job.submit_attempts == 0 or job.error_kind in NOT_SENT_KINDS:
        return RetryPlan.SUBMIT
    if idempotent and not synchronous:
        return RetryPlan.SUBMIT  # resent with the same idempotency key: never billed twice
    return RetryPlan.RESUBMIT

PARAMS_VERSION = 1

_JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def safe_job_id(job_id: str) -> str:
    """``job_id`` as a part of a file name (nbdesk's ids are UUIDs): an id with a path or
    a wildcard in it, which only a crafted database row can hold, is refused
    (``ValueError``) before it can name, or glob, files elsewhere."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id[:40]!r}")
    return job_id


@dataclass(frozen=True)
class JobParams:
    """Everything a user chose for one generation, as stored with the job and the image."""

    aspect_ratio: str | None = None
    resolution: str | None = None
    output_format: str | None = None
    google_search: bool = False
    image_search: bool = False
    cache_key: str | None = None
    with_text: bool = False  # ask for text beside the image (Gemini)

    def to_dict(self) -> dict[str, Any]:
        return {"v": PARAMS_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobParams:
        """Read a stored record; older records are upgraded, unknown keys ignored."""
        d = dict(data)
        d.pop("v", None)
        if "format" in d and "output_format" not in d:  # spelling of early records
            d["output_format"] = d.pop("format")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class JobSpec:
    """What the user asks for; the engine turns one spec into ``count`` jobs."""

    provider: str
    model: str
    prompt: str
    params: JobParams = field(default_factory=JobParams)
    refs: tuple[str, ...] = ()
    demo: bool = False
    parent_item: int | None = None


@dataclass(frozen=True)
class Job:
    id: str
    idem_key: str
    created_at: float
    updated_at: float
    provider: str
    demo: bool
    model: str
    prompt: str
    params: JobParams
    refs: tuple[RefRecord, ...]
    parent_item: int | None
    state: JobState
    remote_id: str | None = None
    progress: float | None = None
    cost: float | None = None
    error: str | None = None
    #: An ErrorKind's text; a plain str so that a kind a newer nbdesk wrote still loads.
    error_kind: str | None = None
    note: str | None = None
    result_urls: tuple[str, ...] = ()
    submit_attempts: int = 0
    lease_owner: str | None = None
    lease_expires: float | None = None
    submitted_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    #: a synchronous answer's parts (text, thought signatures), kept for the items
    turn: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> Job:
        """From a database row (``sqlite3.Row``)."""
        return cls(
            id=row["id"],
            idem_key=row["idem_key"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            provider=row["provider"],
            demo=bool(row["demo"]),
            model=row["model"],
            prompt=row["prompt"],
            params=JobParams.from_dict(json.loads(row["params"] or "{}")),
            refs=tuple(RefRecord.from_dict(r) for r in json.loads(row["refs"] or "[]")),
            parent_item=row["parent_item"],
            state=JobState(row["state"]),
            remote_id=row["remote_id"],
            progress=row["progress"],
            cost=row["cost"],
            error=row["error"],
            error_kind=row["error_kind"],
            note=row["note"],
            result_urls=tuple(json.loads(row["result_urls"] or "[]")),
            submit_attempts=row["submit_attempts"],
            lease_owner=row["lease_owner"],
            lease_expires=row["lease_expires"],
            submitted_at=row["submitted_at"],
            finished_at=row["finished_at"],
            cancel_requested=bool(row["cancel_requested"]),
            turn=tuple(json.loads(row["turn"] or "[]")),
        )

    @property
    def provider_label(self) -> str:
        return f"{self.provider} (demo)" if self.demo else self.provider
