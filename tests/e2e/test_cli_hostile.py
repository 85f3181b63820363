"""``nbdesk`` as a user runs it against a provider that misbehaves on purpose
(tests/hostile.py): retries that never pay twice and say so first, keys repeated back,
--count's maximum, a full disk while keeping a paid Gemini answer."""

from __future__ import annotations

from collections.abc import Callable

from nbdesk.core.jobs import MAX_COUNT, JobState
from nbdesk.sim import Simulator
from tests.e2e.harness import APIFRAME_KEY, APIFREE_KEY, Cli
from tests.hostile import Hostile, json_answer, png_image, script

MakeCli = Callable[..., Cli]
MakeSim = Callable[..., Simulator]


def hostile_cli(make_cli: MakeCli, h: Hostile) -> Cli:
    cli = make_cli()
    cli.env["NBDESK_APIFRAME_BASE_URL"] = h.base_url
    cli.env["NBDESK_APIFREE_BASE_URL"] = h.base_url
    return cli


def healthy_apiframe(h: Hostile) -> None:
    h.route("GET", "/v2/jobs/", json_answer(
        {"status": "COMPLETED", "result": {"images": [h.url("/img/0.png")]}}))
    h.route("GET", "/img/", json_answer(png_image(), headers={"Content-Type": "image/png"}))


def test_a_job_with_a_remote_id_is_continued_by_retry_never_submitted_again(
        make_cli: MakeCli, hostile: Hostile) -> None:
    """The invariant: the poll fails the job (here the provider refuses the poll), the
    server turns healthy, and `nbdesk retry` says it continues job1 unpaid, then polls and
    downloads: the server saw exactly one POST."""
    cli = hostile_cli(make_cli, hostile)
    hostile.route("POST", "/v2/images/generate", json_answer({"jobId": "job1"}))
    hostile.route("GET", "/v2/jobs/", json_answer({"message": "broken"}, status=401))
    failed = cli.run("generate", "a red bicycle", "--provider", "apiframe", "--json")
    assert failed.code != 0, failed.describe()
    (record,) = failed.records()
    assert record["status"] == "failed" and record["remote_id"] == "job1"
    # with --json the reason is on stdout and also one line on stderr
    assert any(line.startswith("nbdesk: job ") for line in failed.stderr_lines()), failed.stderr

    healthy_apiframe(hostile)
    retried = cli.run("retry", record["id"], "--json")
    assert retried.code == 0, retried.describe()
    assert "continues job1 at the provider (no new payment)" in retried.stderr
    (done,) = retried.records()
    assert done["status"] == "completed" and len(done["images"]) == 1
    assert done["retry"] == {"plan": "continue", "paid": False}
    assert hostile.count("POST") == 1


def test_a_retry_that_may_pay_twice_needs_yes(make_cli: MakeCli, hostile: Hostile) -> None:
    """APIFree has no idempotency key: a submit answered by a 500 may have been taken on.
    Its retry is refused (exit 2, nothing sent) without --yes, and done with it."""
    cli = hostile_cli(make_cli, hostile)
    hostile.route("POST", "/v1/image/submit", script(
        json_answer({"message": "oops"}, status=500),
        json_answer({"code": 200, "resp_data": {"request_id": "r2"}})))
    hostile.route("GET", "/v1/image/", json_answer({"code": 200, "resp_data": {
        "request_id": "r2", "status": "success", "image_list": [hostile.url("/img/0.png")]}}))
    hostile.route("GET", "/img/", json_answer(png_image(), headers={"Content-Type": "image/png"}))
    first = cli.run("generate", "a blue boat", "--provider", "apifree", "--json")
    (record,) = first.records()
    assert record["status"] == "interrupted", first.describe()
    assert hostile.count("POST") == 1

    refused = cli.run("retry", record["id"])
    assert refused.code == 2, refused.describe()
    assert "a new paid submission; the provider may already have billed" in refused.stderr
    assert "--yes" in refused.stderr_lines()[-1] and "Traceback" not in refused.stderr
    assert hostile.count("POST") == 1
    assert cli.library.job(record["id"]).state is JobState.INTERRUPTED

    agreed = cli.run("retry", record["id"], "--yes", "--json")
    assert agreed.code == 0, agreed.describe()
    (done,) = agreed.records()
    assert done["status"] == "completed"
    assert done["retry"] == {"plan": "resubmit", "paid": True}
    assert hostile.count("POST") == 2


def test_retry_help_says_which_retry_costs_money(make_cli: MakeCli) -> None:
    helped = make_cli().run("retry", "--help")
    assert helped.code == 0
    text = " ".join(helped.stdout.split())
    assert "no new payment" in text and "--yes" in text


def test_a_key_repeated_back_by_the_provider_is_never_stored_or_shown(
        make_cli: MakeCli, hostile: Hostile) -> None:
    cli = hostile_cli(make_cli, hostile)
    hostile.route("POST", "/v2/images/generate", json_answer(
        {"message": f"Invalid API key provided: {APIFRAME_KEY} (apifree: {APIFREE_KEY})"},
        status=401))
    for args in ([], ["--json"]):
        result = cli.run("generate", "a red bicycle", "--provider", "apiframe", *args)
        assert result.code == 3, result.describe()
        for text in (result.stdout, result.stderr):
            assert APIFRAME_KEY not in text and APIFREE_KEY not in text, result.describe()
        assert "Invalid API key provided: ***" in result.stdout + result.stderr
        if args:  # with --json the reason is one line on stderr too
            assert result.stderr_lines(), result.describe()
    listed = cli.run("jobs", "--json")
    assert APIFRAME_KEY not in listed.stdout
    for job in cli.jobs():
        assert APIFRAME_KEY not in repr(job) and APIFREE_KEY not in repr(job)


def test_count_over_the_maximum_is_refused_before_anything(
        make_cli: MakeCli, hostile: Hostile) -> None:
    cli = hostile_cli(make_cli, hostile)
    result = cli.run("generate", "many", "--provider", "apiframe", "--count",
                     str(MAX_COUNT + 1))
    assert result.code == 2, result.describe()
    (line,) = result.stderr_lines()
    assert f"at most {MAX_COUNT}" in line
    assert cli.jobs() == [] and hostile.seen == []


def test_a_full_disk_while_keeping_a_gemini_answer_is_stored_by_retry_without_a_new_call(
        make_cli: MakeCli, make_sim: MakeSim) -> None:
    """Finding 5: the paid answer (larger than the file-size limit) cannot be written to
    the library; it is kept in the fallback folder, the job fails as "storage" with one
    line and no traceback, nothing partial is left; with the disk freed, `nbdesk retry`
    stores it with no new Gemini call."""
    from tests.reliability.test_storms import FILE_SIZE_LIMIT, file_size_limit, run_cli

    sim = make_sim()
    key = "AIzaSy-e2e-gemini-key-disk-full-1"
    sim.config.keys = {"gemini": {key}}
    cli = make_cli(sim, keys={"gemini": key})
    cli.env["NBDESK_GEMINI_BASE_URL"] = sim.base_url
    failed = run_cli(cli, "generate", "a big kite", "--provider", "gemini", "--model",
                     "gemini-3-pro-image-preview", "--resolution", "4K", "--json",
                     preexec_fn=file_size_limit(FILE_SIZE_LIMIT))
    assert failed.code == 1, failed.describe()
    assert "Traceback" not in failed.stderr
    (record,) = failed.records()
    job = cli.library.job(record["id"])
    assert job.state is JobState.FAILED and job.error_kind == "storage", job
    assert cli.library.tmp_files() == []
    assert sim.stats.submits["gemini"] == 1

    retried = run_cli(cli, "retry", job.id, "--json")
    assert retried.code == 0, retried.describe()
    assert "no new payment" in retried.stderr
    (done,) = retried.records()
    assert done["status"] == "completed" and len(done["images"]) == 1
    (item,) = cli.library.items_for_job(job.id)
    assert item.size > FILE_SIZE_LIMIT
    assert sim.stats.submits["gemini"] == 1  # no new paid call
