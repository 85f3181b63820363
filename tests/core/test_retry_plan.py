"""The one rule of what a Retry does (core.jobs.retry_plan): a job the provider has is
continued, never submitted again."""

from __future__ import annotations

import dataclasses

import pytest

from nbdesk.core.jobs import Job, JobParams, JobState, RetryPlan, retry_plan

BASE = Job(
    id="j1", idem_key="k1", created_at=0.0, updated_at=0.0, provider="apiframe", demo=False,
    model="nano-banana", prompt="p", params=JobParams(), refs=(), parent_item=None,
    state=JobState.FAILED,
)


def job(**fields: object) -> Job:
    return dataclasses.replace(BASE, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["protocol", "internal", "timeout", "storage", "download",
                                  "auth", "transient", None])
@pytest.mark.parametrize("idempotent", [True, False])
def test_a_job_with_a_remote_id_is_continued_whatever_it_failed_of(
        kind: str | None, idempotent: bool) -> None:
    failed = job(remote_id="job1", error_kind=kind, submit_attempts=1)
    plan = retry_plan(failed, synchronous=False, idempotent=idempotent)
    assert plan is RetryPlan.CONTINUE and not plan.paid


def test_a_cancelled_job_with_a_remote_id_is_continued() -> None:
    cancelled = job(state=JobState.CANCELLED, remote_id="job1", submit_attempts=1)
    assert retry_plan(cancelled, synchronous=False, idempotent=False) is RetryPlan.CONTINUE


def test_a_job_the_provider_failed_is_a_new_paid_submission() -> None:
    failed = job(remote_id="job1", error_kind="provider_failed", submit_attempts=1)
    assert retry_plan(failed, synchronous=False, idempotent=True) is RetryPlan.RESUBMIT


@pytest.mark.parametrize("state", [JobState.INTERRUPTED])
def test_an_interrupted_job_is_a_new_paid_submission(state: JobState) -> None:
    interrupted = job(state=state, error_kind="unanswered", submit_attempts=1)
    assert retry_plan(interrupted, synchronous=False, idempotent=False) is RetryPlan.RESUBMIT
    assert retry_plan(interrupted, synchronous=True, idempotent=False) is RetryPlan.RESUBMIT


@pytest.mark.parametrize("kind", ["bad_input", "config", "auth", "bad_request", "offline"])
def test_a_submit_that_was_refused_or_never_left_is_sent_once(kind: str) -> None:
    refused = job(error_kind=kind, submit_attempts=1)
    plan = retry_plan(refused, synchronous=False, idempotent=False)
    assert plan is RetryPlan.SUBMIT and plan.paid


def test_a_job_never_submitted_is_sent_once() -> None:
    cancelled = job(state=JobState.CANCELLED, submit_attempts=0)
    assert retry_plan(cancelled, synchronous=True, idempotent=False) is RetryPlan.SUBMIT


def test_a_maybe_sent_submit_without_an_idempotency_key_is_a_resubmission() -> None:
    broke = job(provider="apifree", error_kind="internal", submit_attempts=1)
    assert retry_plan(broke, synchronous=False, idempotent=False) is RetryPlan.RESUBMIT
    # With an idempotency key (kept by the retry) the provider finds its own job.
    assert retry_plan(broke, synchronous=False, idempotent=True) is RetryPlan.SUBMIT


def test_a_synchronous_answer_kept_on_disk_is_stored_not_paid_again() -> None:
    kept = job(provider="gemini", remote_id="resp1", result_urls=("answer:0:ab",),
               error_kind="storage", submit_attempts=1)
    assert retry_plan(kept, synchronous=True, idempotent=False) is RetryPlan.CONTINUE
    lost = dataclasses.replace(kept, error_kind="lost")
    assert retry_plan(lost, synchronous=True, idempotent=False) is RetryPlan.RESUBMIT
    # A synchronous call whose answer could not be read was billed: asked, never silent.
    unread = job(provider="gemini", error_kind="protocol", submit_attempts=1)
    assert retry_plan(unread, synchronous=True, idempotent=False) is RetryPlan.RESUBMIT
