"""Render the main window with a populated library and a running queue, and save it.

Run under a real X server (``xvfb-run -a python -m tests.ui.screenshot_app OUT.png``):
the same composition as the app (qasync loop, runtime, engine, controller, window),
on a fresh NBDESK_HOME against the loopback simulator.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

PROMPTS = [
    ("apiframe", "nano-banana", "1:1", None, "a red bicycle leaning on a sunlit wall"),
    ("apiframe", "nano-banana-pro", "16:9", "1K", "a lighthouse in the fog at dawn"),
    ("apifree", "google/nano-banana-pro", "3:4", "1K", "isometric coffee shop, warm light"),
    ("apiframe", "nano-banana", "4:3", None, "a snow leopard on a misty ridge"),
    ("apifree", "google/nano-banana-pro", "1:1", "1K", "astronaut portrait, neon alley"),
    ("apiframe", "nano-banana-2", "9:16", "1K", "a vintage car on a coastal road"),
    ("apiframe", "nano-banana", "1:1", None, "a chalkboard menu in a cafe"),
    ("apifree", "google/nano-banana-pro", "16:9", "1K", "a desert castle under the stars"),
]
RUNNING = ["watercolour city at night in the rain", "a robot tending a rooftop garden",
           "an ocean sunset, film photograph"]


def main(out: Path) -> int:
    import qasync
    from PySide6.QtWidgets import QApplication

    from nbdesk.core.jobs import Job, JobParams, JobSpec, JobState
    from nbdesk.core.runtime import Runtime
    from nbdesk.sim import SimConfig, Simulator
    from nbdesk.ui.controller import Controller
    from nbdesk.ui.main_window import MainWindow, apply_app_style

    app = QApplication([sys.argv[0]])
    app.setQuitOnLastWindowClosed(False)  # the engine shuts down after the window closes
    apply_app_style(app)
    home = Path(tempfile.mkdtemp(prefix="nbdesk-shot-"))
    sim = Simulator(SimConfig(queue_seconds=0.1, job_seconds=0.6)).start()
    (home / "settings.json").write_text(json.dumps(
        {"version": 1, "poll_interval": 0.2, "default_provider": "apiframe"}))
    env = {"NBDESK_HOME": str(home), "NBDESK_APIFRAME_API_KEY": "shot-key-1",
           "NBDESK_APIFREE_API_KEY": "shot-key-2", "NBDESK_APIFRAME_BASE_URL": sim.base_url,
           "NBDESK_APIFREE_BASE_URL": sim.base_url}
    rt = Runtime.open(env)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    async def run() -> None:
        async with rt.engine() as engine:
            controller = Controller(rt, engine)
            window = MainWindow(controller)
            window.resize(1440, 900)
            window.show()
            done = asyncio.Event()
            added: list[int] = []

            def on_items(ids: list[int]) -> None:
                added.extend(ids)
                if len(added) >= len(PROMPTS):
                    done.set()

            controller.itemsAdded.connect(on_items)
            for provider, model, ratio, res, prompt in PROMPTS:
                params = JobParams(aspect_ratio=ratio, resolution=res)
                await controller.submit(JobSpec(provider, model, prompt, params))
            await asyncio.wait_for(done.wait(), 60)
            sim.config.job_seconds = 600.0  # these stay running for the picture
            running = asyncio.Event()
            waiting: set[str] = set()

            def on_job(job: Job) -> None:
                if job.id in waiting and job.state is JobState.RUNNING and job.progress:
                    waiting.discard(job.id)
                    if not waiting:
                        running.set()

            controller.jobChanged.connect(on_job)
            for prompt in RUNNING:
                jobs = await controller.submit(JobSpec(
                    "apiframe", "nano-banana-pro", prompt,
                    JobParams(aspect_ratio="1:1", resolution="2K")))
                waiting.update(j.id for j in jobs)
            window.composer.set_prompt("a lighthouse in the fog at dawn, seen from the sea")
            loaded = asyncio.Event()
            window.viewer.imageLoaded.connect(lambda _id: loaded.set())
            window.open_item(added[1])
            idle = asyncio.Event()

            def thumbnails_done(_item: int | None = None) -> None:
                if not window.thumbnails.pending():
                    idle.set()

            window.thumbnails.ready.connect(thumbnails_done)
            thumbnails_done()
            await asyncio.wait_for(asyncio.gather(loaded.wait(), running.wait(),
                                                  idle.wait()), 60)
            window.grab().save(str(out))
            window.close()

    try:
        with loop:
            loop.run_until_complete(run())
    finally:
        rt.close()
        sim.stop()
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
