"""Measure how long the GUI thread is away from its event loop."""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, Qt, QTimer


class StallMonitor(QObject):
    """A precise timer that should fire every ``interval_ms``; any longer gap between two
    firings is time the GUI thread spent elsewhere (a stall)."""

    def __init__(self, interval_ms: int = 4) -> None:
        super().__init__()
        self.interval = interval_ms / 1000
        self.gaps: list[float] = []
        self._last = 0.0
        self._cpu0 = 0.0
        self.cpu_s: float | None = None  # the GUI thread's CPU time from start to stop
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self._cpu0 = time.thread_time()
        self.cpu_s = None
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self.cpu_s = time.thread_time() - self._cpu0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def stalls_ms(self) -> list[float]:
        return [max(0.0, (g - self.interval) * 1000) for g in self.gaps]

    def summary(self) -> dict[str, float]:
        stalls = sorted(self.stalls_ms()) or [0.0]
        return {
            "max_stall_ms": round(stalls[-1], 1),
            "p99_stall_ms": round(stalls[min(len(stalls) - 1, int(len(stalls) * 0.99))], 1),
            "ticks": len(stalls),
            **({} if self.cpu_s is None else {"gui_cpu_s": round(self.cpu_s, 2)}),
        }


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class StallSampler:
    """A watchdog thread: when the GUI thread has not ticked for ``threshold_ms``, record
    where it is (its Python stack). For finding what causes the longest stalls."""

    def __init__(self, monitor: StallMonitor, threshold_ms: float = 25, depth: int = 6) -> None:
        import threading

        self.monitor = monitor
        self.threshold = threshold_ms / 1000
        self.samples: dict[str, int] = {}
        self.depth = depth
        self._gui = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)

    def _run(self) -> None:
        import sys
        import traceback

        while not self._stop.wait(0.005):
            if time.perf_counter() - self.monitor._last > self.threshold:
                frame = sys._current_frames().get(self._gui)
                if frame is None:
                    continue
                stack = traceback.extract_stack(frame)[-self.depth:]
                key = " <- ".join(f"{s.name}:{s.lineno}" for s in reversed(stack))
                self.samples[key] = self.samples.get(key, 0) + 1

    def top(self, n: int = 8) -> list[tuple[int, str]]:
        return sorted(((c, k) for k, c in self.samples.items()), reverse=True)[:n]
