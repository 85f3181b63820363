"""Scenario: open the window on a 10,000-item library and scroll the grid end to end.

Reports the time to the first paint, the longest GUI-thread stall while scrolling (and
while thumbnails decode behind it), the 99th percentile, and the memory afterwards.
Run in its own process: ``python -m bench.scroll HOME [cold|warm]``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path


def run(home: Path, cache: str, profile: bool = False) -> dict[str, float]:
    t_start = time.perf_counter()
    import qasync
    from PySide6.QtWidgets import QApplication

    from bench.stall import StallMonitor, StallSampler, rss_mb
    from nbdesk.app import settle_heap, tune_process
    from nbdesk.core.runtime import Runtime
    from nbdesk.ui.controller import Controller
    from nbdesk.ui.main_window import MainWindow, apply_app_style

    if cache == "cold":
        shutil.rmtree(home / "thumbnails", ignore_errors=True)
    tune_process()  # the app's process settings, as nbdesk.app.main applies them
    app = QApplication([sys.argv[0]])
    app.setQuitOnLastWindowClosed(False)
    apply_app_style(app)
    rt = Runtime.open({"NBDESK_HOME": str(home)})
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    result: dict[str, float] = {}

    async def scenario() -> None:
        async with rt.engine(take_over=False, resume=False) as engine:
            window = MainWindow(Controller(rt, engine))
            window.resize(1440, 900)
            window.show()
            grid = window.library
            shown = asyncio.Event()
            grid.countChanged.connect(lambda n: n and shown.set())
            await asyncio.wait_for(shown.wait(), 30)
            result["items"] = len(grid.visible_ids())
            result["window_ready_s"] = round(time.perf_counter() - t_start, 3)
            await asyncio.sleep(1.0)
            settle_heap()  # as the app does, a second after the window shows
            import gc

            gc_times: list[tuple[int, float]] = []
            gc_start = [0.0]

            def on_gc(phase: str, info: dict[str, int]) -> None:
                if phase == "start":
                    gc_start[0] = time.perf_counter()
                else:
                    gc_times.append((info["generation"], time.perf_counter() - gc_start[0]))

            gc.callbacks.append(on_gc)
            monitor = StallMonitor()
            monitor.start()
            sampler = StallSampler(monitor) if profile else None
            if sampler:
                sampler.start()
            bar = grid.list.verticalScrollBar()
            step = max(1, bar.pageStep())
            t0 = time.perf_counter()
            while bar.value() < bar.maximum():
                bar.setValue(min(bar.maximum(), bar.value() + step))
                await asyncio.sleep(1 / 60)  # one step per frame, as a fast fling
            result["scroll_s"] = round(time.perf_counter() - t0, 2)
            # keep measuring until the visible thumbnails have arrived
            idle = asyncio.Event()

            def check(_id: int | None = None) -> None:
                if not window.thumbnails.pending():
                    idle.set()

            window.thumbnails.ready.connect(check)
            check()
            await asyncio.wait_for(idle.wait(), 60)
            monitor.stop()
            result.update(monitor.summary())
            gc.callbacks.remove(on_gc)
            result["gc_max_ms"] = round(max((t for _g, t in gc_times), default=0) * 1000, 1)
            result["gc_gen2"] = sum(1 for g, _t in gc_times if g == 2)
            if sampler:
                sampler.stop()
                for count, where in sampler.top():
                    print(f"{count:5d}  {where}", file=sys.stderr)
            result["rss_mb"] = round(rss_mb(), 1)
            window.close()

    try:
        with loop:
            loop.run_until_complete(scenario())
    finally:
        rt.close()
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cold",
                         profile="--profile" in sys.argv)))
