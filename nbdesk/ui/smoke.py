"""Test-only hook for the smoke test of the built app (``packaging/smoke.py``).

With ``NBDESK_SMOKE=REPORT.json`` in its environment the app, once its window is shown,
acts out a new user's first image: Demo provider, a prompt, Ctrl+Enter's action
(``Composer.queue``), with the images it was asked to open, if any, as references; it
waits for the image to be in the library and on the viewer, writes what it saw to
``REPORT.json`` and closes its window, the normal way to quit. With
``NBDESK_SMOKE_SCENARIO=start`` it writes the report (when the window was shown) and
closes at once: for start-up times. No user sets those variables by accident; without
them, nothing here is even imported.

The report says where the app found its keychain and keys, which image formats Qt can
read, and (frozen) whether any Python module was loaded from outside the bundle.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtGui import QGuiApplication, QImageReader

from nbdesk.api.capabilities import DEMO, PROVIDERS
from nbdesk.ui.models.keys import KeyState

if TYPE_CHECKING:
    from nbdesk.ui.launch import Opened
    from nbdesk.ui.main_window import MainWindow

PROMPT = "smoke test: a ripe banana on a wooden desk"
TIMEOUT = 120.0  # seconds for the image; the simulator takes a few
#: the report's word for where a key was found (as the CLI's ``keys`` says it)
SOURCES = {KeyState.ENV: "env", KeyState.KEYCHAIN: "keychain", KeyState.MISSING: "none"}


def start(window: MainWindow, out: Path, opening: asyncio.Task[Opened] | None = None,
          scenario: str = "demo") -> asyncio.Task[None]:
    shown = {"shown_mono": time.monotonic(), "shown_wall": time.time(),
             "scenario": scenario}
    return window.controller.spawn(_run(window, out, shown, opening), what="the smoke test")


def modules_outside_bundle() -> list[str] | None:
    """Frozen: the Python modules loaded from files outside the bundle (there should be
    none: the app must not need a Python installation). ``None`` when not frozen."""
    bundle = getattr(sys, "_MEIPASS", None)
    if not bundle:
        return None
    root = os.path.realpath(bundle)
    outside = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        # (shiboken's support modules have made-up relative paths: they live in its library)
        if not path or not os.path.isabs(path):
            continue
        if not os.path.realpath(path).startswith(root + os.sep):
            outside.append(f"{name}: {path}")
    return sorted(outside)


async def _run(window: MainWindow, out: Path, report: dict[str, Any],
               opening: asyncio.Task[Opened] | None) -> None:
    controller = window.controller
    report.update(ok=False, pid=os.getpid(), frozen=bool(getattr(sys, "frozen", False)),
                  platform=QGuiApplication.platformName(), executable=sys.executable)
    added: asyncio.Event = asyncio.Event()
    new_ids: list[int] = []

    def on_items(ids: list[int]) -> None:
        new_ids.extend(ids)
        added.set()

    loaded: asyncio.Event = asyncio.Event()
    controller.itemsAdded.connect(on_items)
    window.viewer.imageLoaded.connect(lambda _id: loaded.set())
    try:
        if report["scenario"] == "start":
            # Let the start-up work in flight (the keychain checks) end before quitting:
            # a keychain thread still running at interpreter exit can abort the process
            # ("FATAL: exception not rethrown"), which is not what this measures.
            current = asyncio.current_task()
            pending = [t for t in controller._tasks if t is not current]
            await asyncio.gather(*pending, return_exceptions=True)
            report["ok"] = True
            return
        if report["scenario"] != "demo":
            raise ValueError(f"unknown NBDESK_SMOKE_SCENARIO {report['scenario']!r}")
        if opening is not None:
            opened = await opening
            report["opened"] = {"viewer": opened.viewer, "references": opened.references,
                                "missing": opened.missing}
        composer = window.composer
        report["tray"] = composer.tray.sources()
        if not composer.select_provider(DEMO):
            raise RuntimeError("the composer offers no Demo provider")
        composer.set_prompt(PROMPT)
        t0 = time.monotonic()
        queued = composer.queue()
        if queued is None:
            raise RuntimeError(f"the composer refused the job: {composer.status_text()}")
        jobs = await queued
        report["job_ids"] = [j.id for j in jobs]
        await asyncio.wait_for(added.wait(), TIMEOUT)
        report["image_s"] = round(time.monotonic() - t0, 3)
        item = await controller.item(new_ids[0])
        library_ids = await controller.item_ids()
        report["item"] = {"id": item.id, "path": str(item.path), "format": item.format,
                          "width": item.width, "height": item.height, "demo": item.demo,
                          "prompt": item.prompt, "refs": len(item.refs)}
        report["in_library"] = item.id in library_ids and item.path.is_file()
        window.open_item(item.id)
        await asyncio.wait_for(loaded.wait(), 30)
        report["in_viewer_s"] = round(time.monotonic() - t0, 3)
        # The window's key-status model asks the keychain again (its one owner).
        await controller.keys.refresh()
        report["keychain"] = controller.keys.backend() or (
            f"error: {controller.keys.backend_error()}")
        keys: dict[str, str] = {}
        for pid in PROVIDERS:
            info = controller.keys.status(pid)
            # no keychain: the runner decides if that is wrong
            keys[pid] = SOURCES.get(info.state, f"error: {info.state.value}")
        report["keys"] = keys
        report["image_formats"] = sorted(
            bytes(f.data()).decode() for f in QImageReader.supportedImageFormats())
        from nbdesk.api.images import png_crc32  # ISA-L's, if it made it into the bundle

        report["png_crc32"] = png_crc32().__module__
        report["modules_outside_bundle"] = modules_outside_bundle()
        report["ok"] = True
    except Exception as exc:  # reported, then the window closes all the same
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        tmp.replace(out)
        window.close()
