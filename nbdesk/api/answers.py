"""Reading a provider's answer: the one rule for what an unreadable answer is, and the
bounds on the values taken from one.

``reading(what)`` wraps every place that reads an answer (a submit's, a poll's, a
synchronous answer, an error body): whatever goes wrong in there that is not already a
typed ``ApiError`` (an ``OverflowError`` from a 400-digit number, a ``RecursionError``
from deep nesting, a ``KeyError`` or ``TypeError`` from a wrong shape) is a
``ProtocolError`` with a short message that never repeats the payload. The engine then
treats it as an answer it could not read (a job with a remote id is polled again, never
submitted again), not as an internal error.

The value helpers turn what a provider claims into something the app can hold: a progress
outside 0..100, a cost that is negative, not finite or absurd, are dropped (None); a job
id must be a short printable string.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from nbdesk.api.base import ApiError, ProtocolError

if TYPE_CHECKING:
    import httpx

#: The longest job id taken from a provider (theirs are UUID-like, under 64 characters).
MAX_REMOTE_ID = 256
#: A cost above this (in the provider's own unit, dollars or credits) is not believed.
MAX_COST = 1_000_000.0
#: The longest message (an error's reason, a status) kept from a provider's answer.
MAX_MESSAGE = 1000
MAX_STATUS = 64


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """Any non-``ApiError`` exception raised inside becomes a ``ProtocolError``
    ("<what>: the provider's answer could not be read (<exception type>)")."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        raise ProtocolError(
            f"{what}: the provider's answer could not be read ({type(exc).__name__})"
        ) from None


def _number(value: Any) -> float | None:
    """A JSON number as a finite float (bools are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > 2**53:
        return None  # absurd for any value read here (and float() may overflow)
    number = float(value)
    return number if math.isfinite(number) else None


def progress_value(value: Any) -> float | None:
    """A progress in percent: a finite number in 0..100, else None."""
    number = _number(value)
    return number if number is not None and 0.0 <= number <= 100.0 else None


def cost_value(value: Any) -> float | None:
    """A cost: a finite number in 0..MAX_COST, else None."""
    number = _number(value)
    return number if number is not None and 0.0 <= number <= MAX_COST else None


def remote_id_value(value: Any) -> str | None:
    """A job id as the provider gave it: a non-empty string of at most MAX_REMOTE_ID
    printable characters without spaces, else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_REMOTE_ID:
        return None
    if not value.isprintable() or any(ch.isspace() for ch in value):
        return None
    return value


def text_value(value: Any, limit: int = MAX_MESSAGE) -> str | None:
    """A message: a non-blank string, stripped and cut to ``limit`` characters."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_value(value: Any) -> str:
    """A job status word as sent (for matching and display), "" when it is not a string."""
    return value.strip()[:MAX_STATUS] if isinstance(value, str) else ""


def error_body(response: httpx.Response) -> Any:
    """The JSON of an error answer, or None when it is not readable JSON. An error's body
    only adds detail to its HTTP status, so a body that cannot be read is no detail (the
    status still decides what the error is)."""
    try:
        return response.json()
    except Exception:
        return None
