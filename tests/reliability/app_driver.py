"""Drive the real desktop app in a subprocess, for the crash trials.

    python -m tests.reliability.app_driver submit --jobs apiframe=12 --jobs apifree=8
    python -m tests.reliability.app_driver resume [--timeout 60]

It runs ``nbdesk.app.main`` itself — the app's own composition: QApplication, qasync
loop, ``Runtime.open()``, ``rt.engine(take_over=True, resume=True)``, ``Controller``,
``MainWindow`` — with one addition: the main window is a subclass that, once the app is
up, acts as a scripted user on the window's own controller. The environment (NBDESK_HOME,
keys, simulator base URLs, NBDESK_FAILPOINT, QT_QPA_PLATFORM=offscreen) comes from the
test.

``submit``: submit the jobs through the controller, print ``submitted <ids>``, then keep
running (the engine works the jobs) until SIGKILLed, or until the line ``close`` arrives
on stdin: then close the window, the normal way to quit.

``resume``: the engine takes up every unfinished job as it starts; wait until no job is
active any more, print each job as a JSON line, close the window (exit 0). Exit 1 when
that takes longer than ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Sequence
from typing import Any

EXIT_TIMEOUT = 1


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app_driver")
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("submit")
    s.add_argument("--jobs", action="append", default=[], metavar="PROVIDER=COUNT",
                   help="jobs to submit on one provider (repeatable)")
    s.add_argument("--prompt", default="app crash trial")
    r = sub.add_parser("resume")
    r.add_argument("--timeout", type=float, default=60.0)
    return p.parse_args(argv)


def _job_line(job: Any) -> str:
    return json.dumps({"id": job.id, "provider": job.provider, "status": job.state.value,
                       "remote_id": job.remote_id, "error": job.error})


async def _submit(window: Any, args: argparse.Namespace) -> int:
    from nbdesk.api.capabilities import PROVIDERS
    from nbdesk.core.jobs import JobParams, JobSpec

    controller = window.controller
    ids: list[str] = []
    for entry in args.jobs:
        provider, _, count = entry.partition("=")
        model = PROVIDERS[provider].default_model.model
        spec = JobSpec(provider, model, f"{args.prompt} on {provider}", JobParams())
        jobs = await controller.submit(spec, int(count))
        ids += [j.id for j in jobs]
    print("submitted " + " ".join(ids), flush=True)

    # Wait for "close" on stdin. A daemon thread reads it (a blocking read must not hold
    # up the interpreter's exit); end of input is not a command: keep running.
    loop = asyncio.get_running_loop()
    close = asyncio.Event()

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "close":
                loop.call_soon_threadsafe(close.set)
                return

    threading.Thread(target=read, name="app-driver-stdin", daemon=True).start()
    await close.wait()
    print("closing the window", flush=True)
    window.close()
    return 0


async def _resume(window: Any, args: argparse.Namespace) -> int:
    controller = window.controller
    idle = asyncio.Event()
    checks: set[asyncio.Task[None]] = set()

    async def check() -> None:
        jobs = await controller.jobs()
        if not any(j.state.active for j in jobs):
            idle.set()

    def schedule(_job: object = None) -> None:
        task = asyncio.ensure_future(check())
        checks.add(task)
        task.add_done_callback(checks.discard)

    # The engine started (and took up the unfinished jobs) before this window existed:
    # look once now, then after every change a job reports.
    controller.jobChanged.connect(schedule)
    schedule()
    code = 0
    try:
        await asyncio.wait_for(idle.wait(), args.timeout)
    except TimeoutError:
        print(f"jobs still active after {args.timeout:g} s", file=sys.stderr, flush=True)
        code = EXIT_TIMEOUT
    controller.jobChanged.disconnect(schedule)
    await asyncio.gather(*checks, return_exceptions=True)
    for job in await controller.jobs():
        print(_job_line(job), flush=True)
    window.close()
    return code


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)

    from nbdesk import app
    from nbdesk.ui import main_window

    outcome: dict[str, int] = {}
    base = main_window.MainWindow

    class DrivenWindow(base):  # type: ignore[misc, valid-type]
        """The app's main window plus a scripted user, started once the window has its
        controller (the app builds its window in steps: frame, grid, then the rest)."""

        def attach(self, controller: Any) -> None:
            super().attach(controller)
            script = _submit if args.mode == "submit" else _resume
            self._script = asyncio.ensure_future(script(self, args))
            self._script.add_done_callback(self._script_done)

        def _script_done(self, task: asyncio.Task[int]) -> None:
            if task.cancelled():
                outcome["code"] = 70
                return
            exc = task.exception()
            if exc is not None:
                print(f"app driver failed: {type(exc).__name__}: {exc}", file=sys.stderr,
                      flush=True)
                outcome["code"] = 70
                self.close()
                return
            outcome["code"] = task.result()

    main_window.MainWindow = DrivenWindow  # type: ignore[misc]
    code = app.main([])
    if code != 0:
        return code
    return outcome.get("code", 70)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
