"""Stateless job tokens and the job timeline.

A simulated job keeps no server-side state: its remote id *is* the job.  The id is
URL-safe base64 (no padding) of ``checksum(4 bytes) + compact JSON``, the JSON an array
``[version, provider code, model, ratio, resolution, format, created ms, seed, ordinal,
flags, prompt head]``.  Any simulator instance, in any process, answers
polls and downloads for any id; an id that does not decode and check out is unknown.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nbdesk.api.capabilities import FORMATS, PROVIDERS

PROMPT_HEAD = 60
FAIL_WORD = "#fail"
WEIRD_WORD = "#weird"
FAIL_REASON = "The model refused: content policy (simulated)"
WEIRD_STATUS = "WEIRD_STATE"

PRICE_STANDARD = 0.039  # per 1K / 2K image (and models without a resolution)
PRICE_4K = 0.24

_PROVIDER_CODES = {"apiframe": "a", "apifree": "f"}
_CODE_PROVIDERS = {v: k for k, v in _PROVIDER_CODES.items()}
_VERSION = 1


class Phase(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    WEIRD = "weird"  # reports an undocumented status forever


@dataclass(frozen=True)
class JobToken:
    provider: str  # "apiframe" | "apifree"
    model: str
    aspect_ratio: str
    resolution: str | None
    output_format: str  # jpg | png | webp
    created_ms: int  # Unix time in milliseconds
    seed: int
    ordinal: int  # the creating simulator's job counter: drives the "rotate" styles
    fail: bool = False
    weird: bool = False
    prompt_head: str = ""

    @property
    def cost(self) -> float:
        return PRICE_4K if self.resolution == "4K" else PRICE_STANDARD

    def encode(self) -> str:
        flags = ("f" if self.fail else "") + ("w" if self.weird else "")
        payload = [
            _VERSION,
            _PROVIDER_CODES[self.provider],
            self.model,
            self.aspect_ratio,
            self.resolution,
            self.output_format,
            self.created_ms,
            self.seed,
            self.ordinal,
            flags,
            self.prompt_head,
        ]
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        blob = hashlib.sha256(raw).digest()[:4] + raw
        return base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, token: str) -> JobToken | None:
        """The job an id stands for, or None when the id is not one of ours (garbled)."""
        if not token or len(token) > 4096:
            return None
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(blob) < 5:
            return None
        digest, raw = blob[:4], blob[4:]
        if hashlib.sha256(raw).digest()[:4] != digest:
            return None
        try:
            data = json.loads(raw)
            return cls._from_payload(data)
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def _from_payload(cls, data: Any) -> JobToken | None:
        if not isinstance(data, list) or len(data) != 11 or data[0] != _VERSION:
            return None
        _, code, model, ratio, resolution, fmt, created, seed, ordinal, flags, head = data
        provider = _CODE_PROVIDERS[code]
        caps = PROVIDERS[provider].model(model)
        if ratio not in caps.aspect_ratios:
            return None
        if resolution is not None and resolution not in caps.resolutions:
            return None
        if fmt not in FORMATS:
            return None
        if not all(isinstance(n, int) for n in (created, seed, ordinal)):
            return None
        if not isinstance(flags, str) or not isinstance(head, str):
            return None
        return cls(
            provider=provider,
            model=model,
            aspect_ratio=ratio,
            resolution=resolution,
            output_format=fmt,
            created_ms=created,
            seed=seed,
            ordinal=ordinal,
            fail="f" in flags,
            weird="w" in flags,
            prompt_head=head,
        )


@dataclass(frozen=True)
class Timeline:
    """Where a job is at a moment, from its age and the simulator's current timings."""

    phase: Phase
    progress: int  # 0..100
    completed_ms: int | None  # when the job reached COMPLETED / FAILED


def timeline(job: JobToken, now_ms: int, queue_seconds: float, job_seconds: float) -> Timeline:
    """Queued until ``queue_seconds``, running until ``job_seconds``, then done.

    The timings are the simulator's *current* ones, so a test may shorten them for a job
    already submitted.  Progress grows linearly from submit to completion.
    """
    age = max(0.0, (now_ms - job.created_ms) / 1000.0)
    job_seconds = max(0.0, job_seconds)
    if job.weird:
        fraction = age / job_seconds if job_seconds > 0 else 1.0
        return Timeline(Phase.WEIRD, max(0, min(99, int(100 * fraction))), None)
    if age >= job_seconds:
        done_ms = job.created_ms + round(job_seconds * 1000)
        return Timeline(Phase.FAILED if job.fail else Phase.COMPLETED, 100, done_ms)
    if age < queue_seconds:
        return Timeline(Phase.QUEUED, 0, None)
    return Timeline(Phase.RUNNING, max(1, min(99, int(100 * age / job_seconds))), None)


def flags_of(prompt: str) -> tuple[bool, bool]:
    """(fail, weird): the magic words a test puts in a prompt."""
    lowered = prompt.lower()
    return FAIL_WORD in lowered, WEIRD_WORD in lowered


def iso8601(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
