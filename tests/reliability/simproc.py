"""The loopback simulator in a process of its own, for tests that measure the window.

In-process, the simulator's server threads (parsing, rendering images, faults) compete
with the GUI thread for the GIL, and every stall they cause would be charged to the app.
A real provider runs elsewhere; this runs the same ``Simulator`` in a child process at a
lower priority (nice +10), so that on a small machine the app gets the CPU first. Its
counters are read over HTTP (``GET /_sim/stats``).

``SimProcess(SimConfig(...))`` starts it; ``.base_url``, ``.stats.snapshot()``, ``.stop()``.
The child ends when its standard input closes, so it never outlives the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict
from typing import Any

import httpx

from nbdesk.sim import Faults, SimConfig, Simulator
from tests.e2e.harness import REPO


class _RemoteStats:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def snapshot(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.base_url}/_sim/stats", timeout=30.0)
        answer.raise_for_status()
        stats: dict[str, Any] = answer.json()
        return stats


class SimProcess:
    def __init__(self, config: SimConfig, *, nice: int = 10) -> None:
        if config.keys is not None:
            raise ValueError("SimProcess does not pass keys on")
        spec = {"queue_seconds": config.queue_seconds, "job_seconds": config.job_seconds,
                "faults": asdict(config.faults), "nice": nice}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.simproc", json.dumps(spec)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the simulator process did not start: {line!r}")
        self.base_url = line
        self.stats = _RemoteStats(line)

    def stop(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # the child's cue to stop
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _serve(spec: dict[str, Any]) -> None:
    os.nice(spec["nice"])
    faults = Faults(**{**spec["faults"], "kinds": tuple(spec["faults"]["kinds"])})
    sim = Simulator(SimConfig(queue_seconds=spec["queue_seconds"],
                              job_seconds=spec["job_seconds"], faults=faults)).start()
    print(sim.base_url, flush=True)
    closed = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes the pipe or dies
        closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    closed.wait()
    sim.stop()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
