"""Render the window with Gemini: an edit chain made through the window's own Edit action,
its middle image open in the viewer (the details show the chain, the kept thought
signatures and the model's text), and the composer editing it with Gemini selected.

Run under a real X server (``xvfb-run -a python -m tests.ui.screenshot_gemini OUT.png``),
on a fresh NBDESK_HOME against the loopback simulator. Also saves OUT-composer.png and
OUT-details.png, close-ups of the two panes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

PRO = "gemini-3-pro-image-preview"
EDITS = ["make the boat red", "add a small white sail"]


def main(out: Path) -> int:
    import qasync
    from PySide6.QtWidgets import QApplication

    from nbdesk.core.jobs import JobParams, JobSpec
    from nbdesk.core.runtime import Runtime
    from nbdesk.sim import SimConfig, Simulator
    from nbdesk.ui.controller import Controller
    from nbdesk.ui.main_window import MainWindow, apply_app_style

    app = QApplication([sys.argv[0]])
    app.setQuitOnLastWindowClosed(False)
    apply_app_style(app)
    home = Path(tempfile.mkdtemp(prefix="nbdesk-gemini-shot-"))
    sim = Simulator(SimConfig(gemini_seconds=0.3)).start()
    (home / "settings.json").write_text(json.dumps(
        {"version": 1, "poll_interval": 0.2, "default_provider": "gemini"}))
    env = {"NBDESK_HOME": str(home), "NBDESK_GEMINI_API_KEY": "shot-gemini-key",
           "NBDESK_GEMINI_BASE_URL": sim.base_url}
    rt = Runtime.open(env)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    async def run() -> None:
        async with rt.engine() as engine:
            controller = Controller(rt, engine)
            window = MainWindow(controller)
            window.resize(1440, 900)
            window.show()
            arrived: asyncio.Queue[int] = asyncio.Queue()
            controller.itemsAdded.connect(lambda ids: [arrived.put_nowait(i) for i in ids])

            await controller.submit(JobSpec(
                "gemini", PRO, "a paper boat on a pond, morning light",
                JobParams(aspect_ratio="4:3", resolution="1K", with_text=True)))
            ids = [await asyncio.wait_for(arrived.get(), 60)]
            composer = window.composer
            tray_changed = asyncio.Event()
            composer.tray.changed.connect(tray_changed.set)

            async def tray_settled() -> None:
                """Until the references are checked (each check ends with a change)."""
                while composer.tray.pending() or not composer.tray.sources():
                    tray_changed.clear()
                    await asyncio.wait_for(tray_changed.wait(), 30)

            for prompt in EDITS:  # the window's Edit action, as a user does it
                item = await controller.item(ids[-1])
                controller.editRequested.emit(item)
                await tray_settled()
                composer.with_text.setChecked(True)
                composer.set_prompt(prompt)
                task = composer.queue()
                assert task is not None, composer.status_text()
                await task
                ids.append(await asyncio.wait_for(arrived.get(), 60))
            print("sim saw turns:", [j.turns for j in sim.stats.jobs],
                  "signatures sent back:", [len(j.signatures) for j in sim.stats.jobs])

            # The middle image open; the composer set to edit the last one.
            last = await controller.item(ids[-1])
            controller.editRequested.emit(last)
            composer.set_prompt("now at sunset, with a heron watching")
            loaded = asyncio.Event()
            window.viewer.imageLoaded.connect(lambda _id: loaded.set())
            window.open_item(ids[1])
            await asyncio.wait_for(loaded.wait(), 30)
            for _ in range(100):
                if "edited into" in window.viewer.parent_label.text():
                    break
                await asyncio.sleep(0.05)
            await tray_settled()
            await asyncio.sleep(0.3)  # thumbnails of the tray and the references paint
            window.grab().save(str(out))
            composer.grab().save(str(out.with_name(out.stem + "-composer.png")))
            window.viewer.details.grab().save(str(out.with_name(out.stem + "-details.png")))
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
