"""The record of a reference image, kept with a job and with the items it made.

(Its own module: the library grid reads items, and their references, before the job
classes are needed.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RefRecord:
    """A reference image of a job: a URL, or a local file copied into the library."""

    source: str  # what the user gave: a path or a URL
    kind: str  # "url" | "file"
    path: str | None = None  # library-relative copy, for files
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    mime: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
