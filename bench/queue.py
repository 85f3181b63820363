"""Scenario child: 200 jobs in flight against the loopback simulator, with the window up.

``python -m bench.queue app``: the window (MainWindow on a copy of the 10,000-item
library) on the qasync loop; 200 jobs (50 prompts x 4 images) submitted through the
Controller, the engine's concurrency raised to 200. Measures the GUI thread's stalls
from the first submit until every job has finished, the library grid has reloaded and
the new thumbnails are in, and the process CPU time per job.

``python -m bench.queue api``: the baseline for the CPU time: the same 200 jobs through
the provider client alone (``ApiframeProvider`` submit and poll at the provider's
interval, then ``download_to`` a temp file) on plain asyncio: the protocol's own cost,
with no engine, database, image check or window.

The simulator runs in another process (``bench.simproc``): the app talks to it over
loopback HTTP as it would to the real provider, and its CPU is not the app's.

A run that has not finished the 200 jobs after CAP_S seconds is stopped and reported as
it stands (``capped``); a watchdog thread reports even when the GUI thread never gets
back to the event loop. ``--profile`` prints where the GUI thread was during stalls
(``StallSampler``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import OUT, emit

JOBS = 200
#: a healthy app finishes the 200 jobs in about 12 s (3.5 s at the simulator plus polling
#: and downloads); past this the run stops and reports how many finished
CAP_S = 60.0
PROMPTS = 50
KEY = "bench-key"


_SIM: list[subprocess.Popen[str]] = []


def leave(result: dict[str, Any]) -> None:
    """Report and end this process now (the simulator with it)."""
    emit(result)
    for sim in _SIM:
        sim.terminate()
    os._exit(0)


def fresh_home() -> Path:
    """A new library home holding a copy of the 10,000-item database; the original
    images are reached through a symlink, so new images land in this home only."""
    from bench.datasets import lib10k

    src = lib10k()
    home = OUT / "tmp" / "queue-home"
    shutil.rmtree(home, ignore_errors=True)
    (home / "images").mkdir(parents=True)
    (home / "images" / "bench").symlink_to(src / "images" / "bench")
    with sqlite3.connect(src / "library.sqlite3") as a, \
            sqlite3.connect(home / "library.sqlite3") as b:
        a.backup(b)
    return home


async def window_run(base_url: str, profile: bool) -> dict[str, Any]:
    from bench.stall import StallMonitor, StallSampler, rss_mb
    from nbdesk.app import settle_heap
    from nbdesk.core.jobs import JobParams, JobSpec, JobState
    from nbdesk.core.runtime import Runtime
    from nbdesk.ui.controller import Controller
    from nbdesk.ui.main_window import MainWindow

    home = fresh_home()
    rt = Runtime.open({"NBDESK_HOME": str(home), "NBDESK_APIFRAME_API_KEY": KEY,
                       "NBDESK_APIFRAME_BASE_URL": base_url})
    config = rt.engine_config

    def engine_config(*, take_over: bool = True) -> Any:
        return dataclasses.replace(config(take_over=take_over), concurrency=JOBS)

    rt.engine_config = engine_config  # type: ignore[method-assign]
    result: dict[str, Any] = {}
    try:
        async with rt.engine(take_over=False, resume=False) as engine:
            controller = Controller(rt, engine)
            window = MainWindow(controller)
            window.resize(1440, 900)
            window.show()
            shown = asyncio.Event()
            window.library.countChanged.connect(lambda n: n and shown.set())
            await asyncio.wait_for(shown.wait(), 30)
            await asyncio.sleep(1.0)
            settle_heap()  # as the app does a second after the window shows
            monitor = StallMonitor()
            monitor.start()
            await asyncio.sleep(1.0)
            monitor.stop()
            idle = monitor.summary()
            result["idle_max_stall_ms"] = idle["max_stall_ms"]
            result["idle_p99_stall_ms"] = idle["p99_stall_ms"]

            finished: dict[str, str] = {}
            all_done = asyncio.Event()

            def on_finished(job: Any) -> None:
                finished[job.id] = job.state.value
                if len(finished) >= JOBS:
                    all_done.set()

            controller.jobFinished.connect(on_finished)
            sampler = StallSampler(monitor, depth=16) if profile else None
            reported = threading.Lock()
            cpu0, t0 = time.process_time(), time.perf_counter()

            def report(capped: bool) -> None:
                """The result so far; from the watchdog thread too (when the GUI thread
                is too busy to get here), so counts are read, never waited for."""
                cpu1, t1 = time.process_time(), time.perf_counter()
                if capped:  # the stall still going on counts too
                    monitor.gaps.append(t1 - monitor._last)
                if not capped:
                    monitor.stop()  # (a QTimer: only from the GUI thread)
                if sampler:
                    sampler.stop()
                    for count, where in sampler.top(12):
                        print(f"{count:5d}  {where}", file=sys.stderr)
                states = list(finished.values())
                completed = sum(1 for s in states if s == JobState.COMPLETED.value)
                result.update(monitor.summary())
                result.update(
                    capped=capped, wall_s=round(t1 - t0, 2), cpu_s=round(cpu1 - cpu0, 2),
                    cpu_per_job_ms=round((cpu1 - cpu0) / JOBS * 1000, 1),
                    completed=completed, failed=len(states) - completed,
                    unfinished=JOBS - len(states), rss_mb=round(rss_mb(), 1))

            def watchdog() -> None:
                if reported.acquire(blocking=False):
                    report(capped=True)
                    leave(result)

            timer = threading.Timer(CAP_S + 15, watchdog)
            timer.daemon = True
            monitor.start()
            if sampler:
                sampler.start()
            timer.start()
            for i in range(PROMPTS):
                spec = JobSpec(provider="apiframe", model="nano-banana",
                               prompt=f"bench {i}: a lighthouse on a snowy ridge at golden hour",
                               params=JobParams(output_format="jpg"))
                await controller.submit(spec, JOBS // PROMPTS)
            result["submit_s"] = round(time.perf_counter() - t0, 2)
            capped = False
            try:
                await asyncio.wait_for(all_done.wait(), CAP_S)
            except TimeoutError:
                capped = True
            result["jobs_s"] = round(time.perf_counter() - t0, 2)
            # the grid shows the new images: wait for its reload and their thumbnails
            deadline = time.perf_counter() + (0 if capped else 20)
            while time.perf_counter() < deadline and (  # noqa: ASYNC110 (several states)
                    window.library.model.is_loading() or window.thumbnails.pending()
                    or len(window.library.visible_ids())
                    < 10_000 + sum(1 for v in finished.values() if v == "completed")):
                await asyncio.sleep(0.05)
            if not reported.acquire(blocking=False):
                await asyncio.sleep(3600)  # the watchdog is reporting
            timer.cancel()
            report(capped)
            result["grid_rows"] = len(window.library.visible_ids())
            if capped:
                leave(result)  # an orderly shutdown could take minutes: not measured
            window.close()
    finally:
        rt.close()
    return result


async def api_run(base_url: str) -> dict[str, Any]:
    """The provider protocol alone: submit, poll, download, for the same 200 jobs."""
    import uuid

    from nbdesk.api.apiframe import ApiframeProvider
    from nbdesk.api.base import GenerationRequest, RemoteState
    from nbdesk.api.capabilities import APIFRAME
    from nbdesk.api.http import download_to, make_client

    scratch = OUT / "tmp" / "queue-api"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    http = make_client()
    provider = ApiframeProvider(http, KEY, base_url)
    sem = asyncio.Semaphore(JOBS)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            req = GenerationRequest(model="nano-banana", output_format="jpg",
                                    prompt=f"bench {i % PROMPTS}: a lighthouse on a snowy ridge")
            remote = (await provider.submit(req, str(uuid.uuid4()))).remote_id
            while True:
                await asyncio.sleep(APIFRAME.poll_interval)
                polled = await provider.poll(remote)
                if polled.state in (RemoteState.COMPLETED, RemoteState.FAILED):
                    break
            for k, url in enumerate(polled.urls):
                await download_to(http, url, scratch / f"{i}-{k}.part", origin=base_url,
                                  max_bytes=APIFRAME.max_download_bytes)
            ok += polled.state is RemoteState.COMPLETED

    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in range(JOBS)))
    finally:
        await http.aclose()
    cpu1, t1 = time.process_time(), time.perf_counter()
    shutil.rmtree(scratch, ignore_errors=True)
    return {"api_wall_s": round(t1 - t0, 2), "api_cpu_s": round(cpu1 - cpu0, 2),
            "api_cpu_per_job_ms": round((cpu1 - cpu0) / JOBS * 1000, 1),
            "api_completed": ok}


def main(mode: str, profile: bool) -> dict[str, Any]:
    from bench.datasets import queue_pool

    sim = subprocess.Popen([sys.executable, "-m", "bench.simproc", str(queue_pool())],
                           stdout=subprocess.PIPE, text=True)
    _SIM.append(sim)
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        if mode == "api":
            return asyncio.run(api_run(base_url))
        import qasync
        from PySide6.QtWidgets import QApplication

        from nbdesk.app import tune_process
        from nbdesk.ui.main_window import apply_app_style

        tune_process()  # the app's process settings, as nbdesk.app.main applies them
        app = QApplication([sys.argv[0]])
        app.setQuitOnLastWindowClosed(False)
        apply_app_style(app)
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        with loop:
            result: dict[str, Any] = loop.run_until_complete(window_run(base_url, profile))
        return result
    finally:
        sim.terminate()
        sim.wait(5)


if __name__ == "__main__":
    emit(main(sys.argv[1] if len(sys.argv) > 1 else "app", "--profile" in sys.argv))
