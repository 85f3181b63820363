"""``nbdesk generate --provider gemini`` as a user runs it: a real subprocess with the key in
NBDESK_GEMINI_API_KEY and NBDESK_GEMINI_BASE_URL pointing at the simulator in this process,
including a SIGKILL while the (slow, synchronous) call is on the wire."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from nbdesk.core.jobs import JobState
from nbdesk.sim import Faults, Simulator
from nbdesk.sim.gemini import REFUSAL_TEXT
from nbdesk.sim.images import image_size
from tests.e2e.harness import Cli
from tests.helpers import wait_until

MakeSim = Callable[..., Simulator]
MakeCli = Callable[..., Cli]

GEMINI_KEY = "AIzaSy-e2e-gemini-key-5c1d8e7a90"
PRO = "gemini-3-pro-image-preview"
HOLD = 3.0  # seconds the simulator holds a scripted "slow" call open


def _gemini_cli(make_cli: MakeCli, sim: Simulator) -> Cli:
    sim.config.keys = {"gemini": {GEMINI_KEY}}  # any other key is refused
    cli = make_cli(sim, keys={"gemini": GEMINI_KEY})
    cli.env["NBDESK_GEMINI_BASE_URL"] = sim.base_url
    return cli


def _one_error_line(stderr: list[str]) -> str:
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("nbdesk: ") and "Traceback" not in stderr[0]
    return stderr[0]


def test_generate_then_edit_with_gemini(make_sim: MakeSim, make_cli: MakeCli,
                                       tmp_path: Path) -> None:
    sim = make_sim()
    cli = _gemini_cli(make_cli, sim)
    ref = tmp_path / "ref.png"
    Image.new("RGB", (16, 16), (20, 200, 40)).save(ref, "PNG")

    gen = cli.run("generate", "a green kite", "--provider", "gemini", "--model", PRO,
                  "--resolution", "2K", "--aspect-ratio", "3:2", "--with-text",
                  "--ref", str(ref), "--json")
    assert gen.code == 0, gen.describe()
    [rec] = gen.records()
    assert (rec["status"], rec["provider"], rec["model"]) == ("completed", "gemini", PRO)
    [path] = rec["images"]
    with Image.open(path) as im:
        assert im.size == image_size("3:2", "2K")
    first = sim.stats.jobs[0]
    assert first.ref_sha256s == [hashlib.sha256(ref.read_bytes()).hexdigest()]
    assert first.params["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]

    [hit] = cli.run("search", "kite", "--json").records()
    assert hit["signatures"] == 2 and hit["text"] and hit["parent_item"] is None

    edit = cli.run("generate", "make it red", "--edit", str(hit["id"]), "--json")
    assert edit.code == 0, edit.describe()
    [rec2] = edit.records()
    assert (rec2["status"], rec2["provider"], rec2["model"]) == ("completed", "gemini", PRO)
    second = sim.stats.jobs[1]
    assert second.turns == 3 and second.n_refs == 0
    assert second.signatures == first.answer_signatures
    [child] = cli.library.items_for_job(rec2["id"])
    assert child.parent_item == hit["id"]
    assert sim.stats.submits["gemini"] == 2
    assert cli.library.verify() == []


def test_text_only_answer_fails_with_that_text(make_sim: MakeSim, make_cli: MakeCli) -> None:
    cli = _gemini_cli(make_cli, make_sim())
    res = cli.run("generate", "nope #fail", "--provider", "gemini", "--json")
    assert res.code == 1, res.describe()
    [rec] = res.records()
    assert (rec["status"], rec["error"], rec["images"]) == ("failed", REFUSAL_TEXT, [])


def test_gemini_config_and_input_problems_are_one_line_and_send_nothing(
    make_sim: MakeSim, make_cli: MakeCli,
) -> None:
    sim = make_sim()
    cli = _gemini_cli(make_cli, sim)
    listed = cli.run("keys", "list")
    assert listed.code == 0 and "from NBDESK_GEMINI_API_KEY" in listed.stdout
    assert GEMINI_KEY not in listed.stdout + listed.stderr
    res = cli.run("generate", "x", "--provider", "gemini", unset=["NBDESK_GEMINI_API_KEY"])
    assert res.code == 3, res.describe()
    assert "NBDESK_GEMINI_API_KEY" in _one_error_line(res.stderr_lines())

    res = cli.run("generate", "x", "--provider", "gemini", "--ref", "https://e.com/a.png")
    assert res.code == 2, res.describe()
    assert "local files only" in _one_error_line(res.stderr_lines())

    res = cli.run("generate", "x", "--provider", "gemini", "--resolution", "4K")
    assert res.code == 2 and "no resolution" in _one_error_line(res.stderr_lines())

    res = cli.run("generate", "x", "--edit", "4242")
    assert res.code == 2 and "no image #4242" in _one_error_line(res.stderr_lines())

    cli.env["NBDESK_GEMINI_BASE_URL"] = "http://example.com"
    res = cli.run("generate", "x", "--provider", "gemini")
    assert res.code == 3 and "https://" in _one_error_line(res.stderr_lines())
    assert sim.stats.snapshot()["requests"] == 0 and cli.jobs() == []
    assert all(GEMINI_KEY.encode() not in p.read_bytes() for p in cli.files_under_home())


def test_sigkill_mid_call_leaves_an_interrupted_job_billed_once(
    make_sim: MakeSim, make_cli: MakeCli,
) -> None:
    sim = make_sim(faults=Faults(slow_seconds=HOLD))
    sim.script("gemini.generate", ["slow"])  # the call stays on the wire for HOLD seconds
    cli = _gemini_cli(make_cli, sim)
    proc = cli.start("generate", "a slow lighthouse", "--provider", "gemini", "--json")

    wait_until(lambda: sim.stats.snapshot()["faults"]["slow"] == 1, 30,
               "the simulator to hold the call")
    [job] = cli.wait_for_jobs(lambda js: len(js) == 1, 30, "the job to be written", proc)
    assert job.state is JobState.SUBMITTING
    cli.kill(proc)
    assert proc.returncode == -9
    # Google finishes (and bills) the call whether or not anyone is listening.
    wait_until(lambda: sim.stats.snapshot()["submits"]["gemini"] == 1, 30,
               "the simulator to finish the call")

    res = cli.run("resume", "--json")
    assert res.code == 1, res.describe()
    [rec] = res.records()
    assert (rec["id"], rec["status"], rec["images"]) == (job.id, "interrupted", [])
    assert "Retry" in rec["error"]
    stats = sim.stats.snapshot()
    assert stats["submits"]["gemini"] == 1 and stats["requests"] == 1  # never resent

    again = cli.run("retry", job.id[:8], "--yes", "--json")  # agreed to pay again
    assert again.code == 0, again.describe()
    [rec] = again.records()
    assert rec["status"] == "completed" and len(rec["images"]) == 1
    assert sim.stats.snapshot()["submits"]["gemini"] == 2  # the user chose to pay again
    assert cli.library.verify() == [] and cli.library.tmp_files() == []


def test_sigkill_after_the_answer_arrived_loses_nothing(
    make_sim: MakeSim, make_cli: MakeCli,
) -> None:
    """Killed once the answer is on disk but before it is in the library: resume stores
    it, nothing is called again."""
    sim = make_sim()
    cli = _gemini_cli(make_cli, sim)
    cli.env["NBDESK_FAILPOINT"] = "download.written"  # after the answer, before the rename
    killed = cli.run("generate", "a quick lighthouse", "--provider", "gemini", "--json")
    del cli.env["NBDESK_FAILPOINT"]
    assert killed.code == -9, killed.describe()
    [job] = cli.jobs()
    assert job.state is JobState.DOWNLOADING
    assert sim.stats.snapshot()["submits"]["gemini"] == 1

    res = cli.run("resume", "--json")
    assert res.code == 0, res.describe()
    [rec] = res.records()
    assert (rec["id"], rec["status"], len(rec["images"])) == (job.id, "completed", 1)
    assert sim.stats.snapshot()["submits"]["gemini"] == 1  # stored, not called again
    assert cli.library.verify() == [] and cli.library.tmp_files() == []
