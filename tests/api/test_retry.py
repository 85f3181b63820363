"""The retry policy itself: backoff, jitter, Retry-After, what is and is not retried."""

from __future__ import annotations

import random

import pytest

from nbdesk.api.base import AuthError, TransientError
from nbdesk.api.http import RetryPolicy, parse_retry_after, with_retries
from tests.helpers import FakeSleep


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base=0.5, cap=8.0, rng=random.Random(7))
    delays = [policy.delay(n, None) for n in range(8)]
    for n, d in enumerate(delays):
        nominal = min(0.5 * 2**n, 8.0)
        assert 0.75 * nominal <= d <= nominal
    assert delays[-1] <= 8.0
    assert delays[3] > delays[0]


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(retry_after_cap=30.0)
    assert policy.delay(0, 3.0) == 3.0
    assert policy.delay(5, 120.0) == 30.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0", 0.0), (" 1.5 ", 1.5), ("", None), (None, None), ("soon", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Sat, 21 Nov 2026 10:00:10 GMT", now=1795255200.0) == 10.0


@pytest.mark.anyio
async def test_with_retries_retries_transient_then_succeeds() -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(rng=random.Random(1), sleep=sleep)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("boom", retry_after=2.0 if calls == 1 else None)
        return "ok"

    assert await with_retries(flaky, policy) == "ok"
    assert calls == 3
    assert sleep.calls[0] == 2.0  # Retry-After wins
    assert 0.75 * 1.0 <= sleep.calls[1] <= 1.0  # then backoff 0.5 * 2**1


@pytest.mark.anyio
async def test_with_retries_gives_up_after_max_attempts() -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(max_attempts=4, rng=random.Random(1), sleep=sleep)

    async def down() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        await with_retries(down, policy)
    assert len(sleep.calls) == 3


@pytest.mark.anyio
async def test_auth_errors_are_never_retried() -> None:
    sleep = FakeSleep()
    calls = 0

    async def denied() -> None:
        nonlocal calls
        calls += 1
        raise AuthError("no")

    with pytest.raises(AuthError):
        await with_retries(denied, RetryPolicy(sleep=sleep))
    assert calls == 1 and sleep.calls == []


@pytest.mark.anyio
async def test_retry_unsent_only_reraises_an_ambiguous_failure() -> None:
    sleep = FakeSleep()
    outcomes = [TransientError("refused", sent=False), TransientError("reset", sent=True)]

    async def call() -> None:
        raise outcomes.pop(0)

    with pytest.raises(TransientError, match="reset"):
        await with_retries(call, RetryPolicy(sleep=sleep), retry_unsent_only=True)
    assert len(sleep.calls) == 1
