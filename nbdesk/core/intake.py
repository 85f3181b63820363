"""What a new job brings in, checked before anything is written or sent: its settings
against the provider's capabilities, and its references (files and URLs), copied into
the library only once every one of them passed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nbdesk.api.base import GenerationRequest, InputError, Reference
from nbdesk.api.capabilities import PROVIDERS
from nbdesk.api.images import ImageInfo, prepare_reference
from nbdesk.api.refs import fetch_reference
from nbdesk.api.validate import validate_request
from nbdesk.core.refs import RefRecord

if TYPE_CHECKING:
    from nbdesk.core.connector import Connector
    from nbdesk.core.jobs import JobSpec
    from nbdesk.core.library import Library

#: A reference checked before a job is written: (source, "file" | "url", bytes, info);
#: bytes and info are None for a URL until it is fetched.
_CheckedRef = tuple[str, str, bytes | None, ImageInfo | None]


def check_spec(spec: JobSpec) -> None:
    """Validate a spec against the capability table; raises InputError."""
    caps = PROVIDERS.get(spec.provider)
    if caps is None:
        raise InputError(f"unknown provider {spec.provider!r}")
    p = spec.params
    validate_request(caps, GenerationRequest(
        model=spec.model, prompt=spec.prompt, aspect_ratio=p.aspect_ratio,
        resolution=p.resolution, output_format=p.output_format,
        google_search=p.google_search, image_search=p.image_search, cache_key=p.cache_key,
        references=[Reference(s) for s in spec.refs], with_text=p.with_text,
    ))


async def import_references(library: Library, connector: Connector, sources: Sequence[str],
                            keep: bool) -> list[RefRecord]:
    """Every reference checked (InputError for the first one refused), a URL fetched and
    verified, then all copied into the library: the records a job is written with."""
    # Every reference is checked before any is copied: a refused one leaves nothing.
    checked = await asyncio.to_thread(check_refs, sources, keep)
    for n, (source, kind, data, info) in enumerate(checked):
        if data is None or info is None:
            # A URL: fetched and verified now rather than failing at the provider.
            data, info = await fetch_reference(connector.http, source,
                                               keep_metadata=keep)
            checked[n] = (source, kind, data, info)
    refs = await asyncio.to_thread(import_refs, library, checked)
    return refs


def check_refs(sources: Sequence[str], keep_metadata: bool) -> list[_CheckedRef]:
    """Every reference checked (InputError for the first one refused): (source, kind,
    the file's bytes, without their metadata unless ``keep_metadata``, and info), or
    (url, "url", None, None) for a URL."""
    checked: list[_CheckedRef] = []
    for source in sources:
        _ref, data, info = prepare_reference(source, keep_metadata=keep_metadata)
        checked.append((source, "url" if data is None else "file", data, info))
    return checked


def import_refs(library: Library, checked: Sequence[_CheckedRef]) -> list[RefRecord]:
    """Copy the checked references into the library; a URL's fetched bytes too (it
    is still sent as the URL: the copy keeps the reference beside the image)."""
    records = []
    for source, kind, data, info in checked:
        if data is None or info is None:
            raise ValueError(f"reference {source!r} was not fetched")
        rel, digest = library.import_ref(data, info.ext)
        records.append(RefRecord(
            source=source, kind=kind, path=rel, sha256=digest,
            width=info.width, height=info.height, mime=info.mime,
        ))
    return records
