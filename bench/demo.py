"""Scenario: a new user (fresh NBDESK_HOME, no key) opens the app, types a prompt and
presses Ctrl+Enter on the default provider (Demo). Measures the time until the image is
in the library and the viewer. Run: ``python -m bench.demo`` (offscreen or under Xvfb)."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path


def run() -> dict[str, float]:
    import qasync
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from nbdesk.core.runtime import Runtime
    from nbdesk.demo import start_demo
    from nbdesk.ui.controller import Controller
    from nbdesk.ui.main_window import MainWindow, apply_app_style

    home = Path(tempfile.mkdtemp(prefix="nbdesk-demo-"))
    env = {"NBDESK_HOME": str(home)}  # and no key variables at all
    app = QApplication([sys.argv[0]])
    app.setQuitOnLastWindowClosed(False)
    apply_app_style(app)
    rt = Runtime.open(env, demo=start_demo)  # as the app does
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    result: dict[str, float] = {}

    async def scenario() -> None:
        async with rt.engine() as engine:
            controller = Controller(rt, engine)
            window = MainWindow(controller)
            window.show()
            result["provider_is_demo"] = float(window.composer.provider_choice() == "demo")
            shown = asyncio.Event()
            window.viewer.imageLoaded.connect(lambda _id: shown.set())
            added = asyncio.Event()
            controller.itemsAdded.connect(lambda ids: window.open_item(ids[0]) or added.set())
            QTest.keyClicks(window.composer.prompt, "a red bicycle")
            t0 = time.perf_counter()
            QTest.keyClick(window.composer.prompt, Qt.Key.Key_Return,
                           Qt.KeyboardModifier.ControlModifier)
            await asyncio.wait_for(added.wait(), 60)
            result["image_in_library_s"] = round(time.perf_counter() - t0, 2)
            await asyncio.wait_for(shown.wait(), 30)
            result["image_in_viewer_s"] = round(time.perf_counter() - t0, 2)
            window.close()

    try:
        with loop:
            loop.run_until_complete(scenario())
    finally:
        rt.close()
    return result


if __name__ == "__main__":
    print(json.dumps(run()))
