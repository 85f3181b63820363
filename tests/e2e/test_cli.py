"""The ``nbdesk`` command, run as a user would: a real subprocess, a real library on disk,
the provider APIs served by the loopback simulator in the test process."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from nbdesk.core.jobs import JobState
from nbdesk.sim import Simulator
from tests.e2e.harness import APIFRAME_KEY, APIFREE_KEY, Cli

MakeSim = Callable[..., Simulator]
MakeCli = Callable[..., Cli]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(result_stderr: list[str]) -> str:
    assert len(result_stderr) == 1, result_stderr
    line = result_stderr[0]
    assert line.startswith("nbdesk: "), line
    assert "Traceback" not in line
    return line


# ---------------------------------------------------------------------------- (a) demo


def test_demo_generate_needs_no_key_and_lands_in_the_library(make_cli: MakeCli) -> None:
    cli = make_cli(None, keys={})  # a new user: no key anywhere, a fresh NBDESK_HOME

    gen = cli.run("generate", "a red bicycle", "--provider", "demo", "--json")

    assert gen.code == 0, gen.describe()
    [rec] = gen.records()
    assert rec["status"] == "completed"
    assert rec["prompt"] == "a red bicycle"
    assert rec["provider"] == "apiframe (demo)"
    assert rec["error"] is None
    assert rec["remote_id"]
    [image_path] = (Path(p) for p in rec["images"])
    assert image_path.is_absolute()
    assert image_path.is_relative_to(cli.library.root / "images")
    with Image.open(image_path) as im:
        im.load()  # decodes every pixel
        assert im.width > 0 and im.height > 0
    [item] = cli.library.items_for_job(rec["id"])
    assert item.path == image_path
    assert item.sha256 == _sha256(image_path)
    assert item.size == image_path.stat().st_size
    assert cli.library.verify() == []

    found = cli.run("search", "bicycle", "--json")
    assert found.code == 0, found.describe()
    hits = found.records()
    assert [(h["job_id"], h["path"]) for h in hits] == [(rec["id"], str(image_path))]
    assert cli.run("search", "unicorn", "--json").records() == []

    listed = cli.run("jobs", "--json")
    assert listed.code == 0, listed.describe()
    [job] = listed.records()
    assert (job["id"], job["status"], job["images"]) == (rec["id"], "completed", rec["images"])


# ---------------------------------------------------------------------------- (b) bad input


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, "PNG")
    return path


def _text_file(path: Path) -> Path:
    path.write_text("this is not a picture\n")
    return path


BAD_INPUTS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    # case: (arguments after `generate`, built in a temp folder; words the error must contain)
    "empty prompt": (lambda d: ["", "--provider", "apiframe"], "empty"),
    "2001-character prompt": (lambda d: ["x" * 2001, "--provider", "apiframe"], "2000"),
    "ratio 21:9 on nano-banana": (
        lambda d: ["a cat", "--provider", "apiframe", "--model", "nano-banana",
                   "--aspect-ratio", "21:9"], "21:9"),
    "resolution on nano-banana": (
        lambda d: ["a cat", "--provider", "apiframe", "--resolution", "2K"], "resolution"),
    "4 references on nano-banana": (
        lambda d: ["a cat", "--provider", "apiframe",
                   *(a for i in range(4) for a in ("--ref", str(_png(d / f"r{i}.png"))))],
        "at most 3"),
    "reference that is not an image": (
        lambda d: ["a cat", "--provider", "apiframe", "--ref", str(_text_file(d / "notes.png"))],
        "notes.png"),
    "file:// reference": (
        lambda d: ["a cat", "--provider", "apiframe", "--ref", "file:///etc/passwd"],
        "http(s)"),
    "missing reference file": (
        lambda d: ["a cat", "--provider", "apifree", "--ref", str(d / "gone.jpg")], "gone.jpg"),
    "count 0": (lambda d: ["a cat", "--provider", "apifree", "--count", "0"], "at least 1"),
    # Refused by the argument parser: still one line, not a usage screen.
    "resolution 8K": (lambda d: ["a cat", "--provider", "apifree", "--resolution", "8K"], "8K"),
    "count not a number": (lambda d: ["a cat", "--count", "many"], "'many'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_and_sends_and_writes_nothing(
    case: str, make_sim: MakeSim, make_cli: MakeCli, tmp_path: Path
) -> None:
    sim = make_sim()
    cli = make_cli(sim)
    build, expected = BAD_INPUTS[case]
    args = build(tmp_path)

    result = cli.run("generate", *args, "--json")

    assert result.code == 2, result.describe()
    line = _one_error_line(result.stderr_lines())
    assert expected in line, line
    assert result.stdout == ""
    assert cli.jobs() == []
    assert sim.stats.snapshot()["requests"] == 0
    assert list(cli.library.paths.refs.rglob("*.*")) == []  # no reference copied in
    assert cli.library.tmp_files() == []


# ---------------------------------------------------------------------------- (c) no key


def test_no_key_exits_3_with_one_clear_line(make_sim: MakeSim, make_cli: MakeCli) -> None:
    sim = make_sim()
    cli = make_cli(sim, keys={})  # no env key; HOME/XDG fresh, D-Bus leads nowhere

    result = cli.run("generate", "a red bicycle", "--provider", "apiframe", "--json")

    assert result.code == 3, result.describe()
    line = _one_error_line(result.stderr_lines())
    assert "Apiframe" in line
    assert "NBDESK_APIFRAME_API_KEY" in line  # tells the user a way out
    assert result.stdout == ""
    assert cli.jobs() == []
    assert sim.stats.snapshot()["requests"] == 0
    # Nothing keychain-like was created in the private HOME either.
    assert not (cli.system / ".local" / "share" / "keyrings").exists()
    assert not list((cli.system / ".local" / "share").rglob("*keyring*"))


# ---------------------------------------------------------------------------- (d) wrong key


@pytest.mark.parametrize("provider", ["apiframe", "apifree"])
def test_wrong_key_fails_the_job_exit_3_and_the_key_is_never_written(
    provider: str, make_sim: MakeSim, make_cli: MakeCli
) -> None:
    sim = make_sim(queue_seconds=0.05, job_seconds=0.3,
                   keys={"apiframe": {"afk_the-right-one-000"}, "apifree": {"right-free-000"}})
    cli = make_cli(sim)
    wrong = {"apiframe": APIFRAME_KEY, "apifree": APIFREE_KEY}[provider]

    result = cli.run("-v", "generate", "a red bicycle", "--provider", provider, "--json")

    assert result.code == 3, result.describe()
    [rec] = result.records()
    assert rec["status"] == "failed"
    assert "API key" in rec["error"]
    [job] = cli.jobs()
    assert (job.state, job.error_kind) == (JobState.FAILED, "auth")
    assert sim.stats.snapshot()["submits"][provider] == 0
    # The key is nowhere: not in the output, not in the database, the logs or any file.
    assert wrong not in result.stdout
    assert wrong not in result.stderr
    files = list(cli.files_under_home())
    assert any(p.suffix == ".log" for p in files)  # the log was written (and checked)
    for path in files:
        assert wrong.encode() not in path.read_bytes(), f"the key leaked into {path}"


# ---------------------------------------------------------------------------- (e) no-wait


def test_no_wait_then_resume_finishes_without_paying_again(
    make_sim: MakeSim, make_cli: MakeCli
) -> None:
    sim = make_sim(queue_seconds=0.2, job_seconds=1.0)
    cli = make_cli(sim)

    gen = cli.run("generate", "three foxes", "--provider", "apiframe", "--count", "3",
                  "--no-wait", "--json")

    assert gen.code == 0, gen.describe()
    submitted = gen.records()
    assert len(submitted) == 3
    assert len({r["id"] for r in submitted}) == 3
    for rec in submitted:
        assert rec["remote_id"], rec
        assert rec["status"] in ("submitted", "running"), rec
        assert rec["images"] == []
    for job in cli.jobs():
        assert job.lease_owner is None  # the finished process let go of its jobs

    # Resumed where the key is missing: refused before any job is touched (a paid job
    # failed for want of a key would be paid again by a retry).
    before = sim.stats.snapshot()["requests"]
    keyless = cli.run("resume", "--json", unset=["NBDESK_APIFRAME_API_KEY"])
    assert keyless.code == 3, keyless.describe()
    line = _one_error_line(keyless.stderr_lines())
    assert "NBDESK_APIFRAME_API_KEY" in line and "3 unfinished job(s)" in line
    assert keyless.stdout == ""
    for rec, job in zip(submitted, cli.jobs(), strict=True):
        assert (job.id, job.state.value, job.remote_id) == (rec["id"], rec["status"],
                                                             rec["remote_id"])
        assert job.error is None and job.lease_owner is None
    assert sim.stats.snapshot()["requests"] == before

    res = cli.run("resume", "--json")

    assert res.code == 0, res.describe()
    done = {r["id"]: r for r in res.records()}
    assert set(done) == {r["id"] for r in submitted}
    for rec in submitted:
        again = done[rec["id"]]
        assert again["status"] == "completed"
        assert again["remote_id"] == rec["remote_id"]  # polled, never resubmitted
        [path] = again["images"]
        assert Path(path).is_file()
    stats = sim.stats.snapshot()
    assert stats["submits"]["apiframe"] == 3
    assert stats["replays"] == 0
    assert cli.library.verify() == []

    # Nothing left: a second resume has nothing to do and says so.
    idle = cli.run("resume", "--json")
    assert (idle.code, idle.stdout) == (0, "")
    assert sim.stats.snapshot()["submits"]["apiframe"] == 3


def test_a_job_the_provider_fails_exits_1_with_its_reason(
    make_sim: MakeSim, make_cli: MakeCli
) -> None:
    sim = make_sim(queue_seconds=0.05, job_seconds=0.3)
    cli = make_cli(sim)

    result = cli.run("generate", "a cat #fail", "--provider", "apifree", "--json")

    assert result.code == 1, result.describe()
    [rec] = result.records()
    assert rec["status"] == "failed"
    assert "content policy" in rec["error"]
    assert rec["images"] == []
    assert cli.library.job(rec["id"]).error_kind == "provider_failed"
    assert sim.stats.snapshot()["submits"]["apifree"] == 1


def test_a_reference_reaches_the_provider_intact_and_a_unicode_prompt_is_searchable(
    make_sim: MakeSim, make_cli: MakeCli, tmp_path: Path
) -> None:
    sim = make_sim(queue_seconds=0.05, job_seconds=0.3)
    cli = make_cli(sim)
    ref = _png(tmp_path / "sketch.png")
    prompt = "un vélo rouge 🚲 devant la mer"

    gen = cli.run("generate", prompt, "--provider", "apiframe", "--ref", str(ref), "--json")

    assert gen.code == 0, gen.describe()
    [rec] = gen.records()
    assert rec["prompt"] == prompt
    [sent] = sim.stats.snapshot()["jobs"]
    assert sent["prompt"] == prompt
    assert sent["ref_sha256s"] == [_sha256(ref)]  # the original bytes, as a data: URI
    [kept] = cli.library.job(rec["id"]).refs
    assert (kept.kind, kept.sha256, kept.source) == ("file", _sha256(ref), str(ref))
    assert kept.path is not None
    assert _sha256(cli.library.root / kept.path) == _sha256(ref)  # the library's own copy
    assert cli.library.verify() == []

    found = cli.run("search", "velo", "--json")  # diacritics folded, prefix match
    assert [h["job_id"] for h in found.records()] == [rec["id"]]
    assert found.records()[0]["prompt"] == prompt


def test_ctrl_c_leaves_jobs_for_resume(make_sim: MakeSim, make_cli: MakeCli) -> None:
    sim = make_sim(queue_seconds=0.1, job_seconds=1.5)
    cli = make_cli(sim)
    proc = cli.start("generate", "patience", "--provider", "apifree", "--count", "2", "--json")
    cli.wait_for_jobs(lambda js: len(js) == 2 and all(j.remote_id for j in js), 20,
                      "both remote ids", proc)

    proc.send_signal(signal.SIGINT)
    stopped = cli.finish(proc)

    assert stopped.code == 130, stopped.describe()
    assert "nbdesk resume" in _one_error_line(stopped.stderr_lines())
    jobs = cli.jobs()
    assert all(j.state in (JobState.SUBMITTED, JobState.RUNNING) for j in jobs), jobs
    assert all(j.lease_owner is None for j in jobs)  # let go on the way out

    res = cli.run("resume", "--json")

    assert res.code == 0, res.describe()
    assert [r["status"] for r in res.records()] == ["completed", "completed"]
    assert sim.stats.snapshot()["submits"]["apifree"] == 2  # polled, never resent
    assert cli.library.verify() == [] and cli.library.tmp_files() == []


# ---------------------------------------------------------------------------- (f) cancel/retry


def test_cancel_and_retry_an_interrupted_job(make_sim: MakeSim, make_cli: MakeCli) -> None:
    sim = make_sim(queue_seconds=0.1, job_seconds=0.5)
    cli = make_cli(sim)
    # APIFree creates both jobs, then the connection breaks before either answer arrives.
    sim.script("apifree.submit", ["reset_after", "reset_after"])

    gen = cli.run("generate", "a lighthouse", "--provider", "apifree", "--count", "2", "--json")

    assert gen.code == 1, gen.describe()
    recs = gen.records()
    assert [r["status"] for r in recs] == ["interrupted", "interrupted"]
    for rec in recs:
        assert rec["remote_id"] is None
        assert "Retry" in rec["error"] and "APIFree" in rec["error"]
    stats = sim.stats.snapshot()
    assert stats["submits"]["apifree"] == 2
    assert [j["answered"] for j in stats["jobs"]] == [False, False]
    a, b = (r["id"] for r in recs)

    cancelled = cli.run("cancel", a[:8])

    assert cancelled.code == 0, cancelled.describe()
    assert cancelled.stdout.split() == [a[:8], "cancelled"]
    assert cli.library.job(a).state is JobState.CANCELLED
    assert cli.library.job(a).note is None  # never sent again, so nothing can be billed

    retried = cli.run("retry", b, "--yes", "--json")  # a maybe-billed resubmission: agreed

    assert retried.code == 0, retried.describe()
    [rec] = retried.records()
    assert rec["id"] == b
    assert rec["status"] == "completed"
    assert rec["error"] is None
    [path] = rec["images"]
    assert Path(path).is_file()
    assert sim.stats.snapshot()["submits"]["apifree"] == 3  # the retry is one new submission
    assert cli.library.job(a).state is JobState.CANCELLED  # untouched by the retry
    assert cli.library.verify() == []

    # A completed job cannot be retried; a batch holding one is refused whole (exit 2
    # promises that nothing was submitted), and an unknown id is named.
    again = cli.run("retry", a, b)
    assert again.code == 2, again.describe()
    line = _one_error_line(again.stderr_lines())
    assert b[:8] in line and "completed" in line
    assert cli.library.job(a).state is JobState.CANCELLED
    assert cli.library.job(a).lease_owner is None
    unknown = cli.run("cancel", "ffffffff")
    assert unknown.code == 2, unknown.describe()
    assert "ffffffff" in _one_error_line(unknown.stderr_lines())
    assert sim.stats.snapshot()["submits"]["apifree"] == 3


# ---------------------------------------------------------------------------- (g) keys list


def test_keys_list_names_the_env_variable_and_never_prints_the_key(make_cli: MakeCli) -> None:
    cli = make_cli(None)

    result = cli.run("keys", "list")

    assert result.code == 0, result.describe()
    assert "apiframe" in result.stdout and "from NBDESK_APIFRAME_API_KEY" in result.stdout
    assert "apifree" in result.stdout and "from NBDESK_APIFREE_API_KEY" in result.stdout
    for key in (APIFRAME_KEY, APIFREE_KEY):
        assert key not in result.stdout
        assert key not in result.stderr
