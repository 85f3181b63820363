"""Shared helpers of the benchmark runner: paths, the Qt environment, child processes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
OFFSCREEN = f"offscreen:configfile={ROOT / 'tests' / 'offscreen.json'}"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a scenario process: headless Qt (unless the caller chose a
    platform), no stray nbdesk settings or keys from the shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBDESK_")}
    env.setdefault("QT_QPA_PLATFORM", OFFSCREEN)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if extra:
        env.update(extra)
    return env


class ChildFailed(RuntimeError):
    pass


def run_child(module: str, args: Sequence[str] = (), *, env: dict[str, str] | None = None,
              timeout: float = 300, started: list[float] | None = None) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh interpreter; its last stdout line is JSON.

    ``started`` (if given) receives ``time.monotonic()`` taken just before the spawn: the
    child can compare its own ``time.monotonic()`` with it (CLOCK_MONOTONIC is system-wide).
    """
    cmd = [sys.executable, "-m", module, *args]
    t0 = time.monotonic()
    if started is not None:
        started.append(t0)
    proc = subprocess.run(cmd, cwd=ROOT, env=env or child_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        raise ChildFailed(f"{' '.join(cmd[2:])} exited {proc.returncode}:\n"
                          f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.stderr.strip():
        noise = [ln for ln in proc.stderr.splitlines()
                 if "propagateSizeHints" not in ln and ln.strip()]
        if noise:
            result.setdefault("_stderr", "\n".join(noise[-30:]))
    return result


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else float("nan")


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per numeric key, the median over the runs."""
    keys = {k for r in runs for k, v in r.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
    return {k: round(median([r[k] for r in runs if k in r]), 4) for k in sorted(keys)}


def emit(result: dict[str, Any]) -> None:
    """A child's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def exit_with_parent() -> None:
    """For helper servers: end this process when the one that started it is gone (so a
    scenario killed by a timeout leaves nothing running)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
