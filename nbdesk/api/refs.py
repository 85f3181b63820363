"""Reference images given as URLs: fetched once before anything is sent.

The provider fetches a URL reference itself, and a link to a web page, a missing file or
a dead host would only fail there, after the job was paid for or with an opaque message.
So nbdesk fetches it first (no key is ever sent with it), checks it is a whole image
within the reference limits, and keeps the bytes: the library stores a copy beside the
job, so the reference survives the link.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from nbdesk.api.base import InputError
from nbdesk.api.images import (
    MAX_REFERENCE_BYTES,
    MAX_REFERENCE_PIXELS,
    REFERENCE_FORMATS,
    ImageCheckError,
    ImageInfo,
    probe_bytes,
    strip_metadata,
)

if TYPE_CHECKING:  # imported with the client (nbdesk.api.http.make_client)
    import httpx

#: Seconds for the whole fetch of one reference.
FETCH_TIMEOUT = 30.0
#: Content types that are certainly not a picture (a page, an error document).
_NOT_IMAGES = ("text/", "application/json", "application/xml", "application/xhtml")


def _name(url: str) -> str:
    return repr(url if len(url) <= 80 else url[:77] + "...")


async def fetch_reference(
    client: httpx.AsyncClient, url: str, *, max_bytes: int = MAX_REFERENCE_BYTES,
    max_pixels: int = MAX_REFERENCE_PIXELS, seconds: float = FETCH_TIMEOUT,
    keep_metadata: bool = False,
) -> tuple[bytes, ImageInfo]:
    """GET ``url`` (redirects followed) and verify the answer is a whole image. The bytes
    returned (the library's copy) are without their metadata unless ``keep_metadata``
    (``images.strip_metadata``).

    Every refusal is an ``InputError`` whose message names the URL and says why."""
    import httpx

    name = _name(url)
    try:
        async with asyncio.timeout(seconds):
            async with client.stream("GET", url, follow_redirects=True,
                                     headers={"Accept": "image/*"}) as response:
                if response.status_code >= 400:
                    raise InputError(
                        f"reference image {name}: the server answered HTTP "
                        f"{response.status_code}, so the provider could not fetch it either")
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype.startswith(_NOT_IMAGES):
                    what = "a web page" if "html" in ctype else f"{ctype}"
                    raise InputError(
                        f"reference image {name}: the address leads to {what}, not to an "
                        "image; use the picture's own address (right-click it, "
                        "\"Copy image address\")")
                body = bytearray()
                async for block in response.aiter_bytes():
                    body += block
                    if len(body) > max_bytes:
                        raise InputError(
                            f"reference image {name}: larger than "
                            f"{max_bytes // (1024 * 1024)} MB")
    except TimeoutError:
        raise InputError(
            f"reference image {name}: no complete answer within {seconds:.0f} s") from None
    except httpx.TooManyRedirects:
        raise InputError(f"reference image {name}: too many redirects") from None
    except httpx.HTTPError as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        raise InputError(f"reference image {name}: cannot fetch it ({reason})") from None
    data = bytes(body)
    try:
        info = await asyncio.to_thread(
            probe_bytes, data, max_pixels=max_pixels, formats=REFERENCE_FORMATS)
        if not keep_metadata:
            data = await asyncio.to_thread(strip_metadata, data, info.mime)
    except ImageCheckError as exc:
        raise InputError(f"reference image {name}: {exc}") from None
    return data, info
