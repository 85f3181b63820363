"""Drive the real ``nbdesk`` command in a subprocess against a simulator in the test process.

Every run gets a private NBDESK_HOME (the library, settings, logs) and a private HOME /
XDG folders with a D-Bus address that leads nowhere, so no run can reach the user's own
keychain or files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdesk.core.jobs import Job, JobState
from nbdesk.core.library import Library
from nbdesk.core.paths import Paths
from nbdesk.sim import Simulator
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]

#: Test keys: long and distinctive, so a leak into any output or file is easy to find.
APIFRAME_KEY = "afk_e2e-apiframe-key-7f3a9c2e51"
APIFREE_KEY = "e2e-apifree-key-b84d06c1f9"

#: Environment variables that must not leak from the developer's shell into a run.
_SCRUBBED_PREFIXES = ("NBDESK_", "XDG_", "PYTHON_KEYRING", "GNOME_KEYRING", "KEYRING_")
_SCRUBBED = frozenset({"HOME", "DBUS_SESSION_BUS_ADDRESS", "PYTHONWARNINGS"})

#: Fast polling for the e2e runs (the settings file's lowest accepted value).
FAST_SETTINGS: dict[str, Any] = {"version": 1, "poll_interval": 0.2}


#: Every CLI result of this test process, for the reliability suite's leak scan (the key
#: values the harness uses must never appear in any command's output).
OUTPUTS: list[Result] = []


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def __post_init__(self) -> None:
        OUTPUTS.append(self)

    def records(self) -> list[dict[str, Any]]:
        """The ``--json`` lines of stdout, parsed (every non-empty line must be JSON)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class Cli:
    """One user's nbdesk installation: NBDESK_HOME, settings, keys, and the command."""

    def __init__(
        self,
        base: Path,
        sim: Simulator | None = None,
        *,
        keys: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.base = base
        self.home = base / "home"  # NBDESK_HOME
        self.system = base / "system"  # HOME and the XDG folders
        self.out = base / "out"  # captured output of background runs (outside NBDESK_HOME)
        for d in (self.home, self.out, *self._xdg().values()):
            d.mkdir(parents=True, exist_ok=True)
        self.sim = sim
        self.env = self._environment(sim, keys)
        with open(self.home / "settings.json", "w", encoding="utf-8") as fh:
            json.dump(dict(settings if settings is not None else FAST_SETTINGS), fh)
        # Opened (and the database created) before any run, so runs never race to create it.
        self.library = Library(Paths.resolve({"NBDESK_HOME": str(self.home)}))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._started = 0

    def _xdg(self) -> dict[str, Path]:
        return {
            "HOME": self.system,
            "XDG_CONFIG_HOME": self.system / ".config",
            "XDG_DATA_HOME": self.system / ".local" / "share",
            "XDG_CACHE_HOME": self.system / ".cache",
            "XDG_STATE_HOME": self.system / ".local" / "state",
            "XDG_RUNTIME_DIR": self.system / "run",
        }

    def _environment(
        self, sim: Simulator | None, keys: Mapping[str, str] | None
    ) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items()
            if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)
        }
        env.update({k: str(v) for k, v in self._xdg().items()})
        env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent"
        env["NBDESK_HOME"] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        if sim is not None:
            env["NBDESK_APIFRAME_BASE_URL"] = sim.base_url
            env["NBDESK_APIFREE_BASE_URL"] = sim.base_url
        if keys is None:
            keys = {"apiframe": APIFRAME_KEY, "apifree": APIFREE_KEY}
        for provider, key in keys.items():
            env[f"NBDESK_{provider.upper()}_API_KEY"] = key
        return env

    # ---------------------------------------------------------------- running

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "nbdesk", *args]

    def run(self, *args: str, timeout: float = 60.0, unset: Sequence[str] = ()) -> Result:
        """Run ``nbdesk ARGS`` to the end (without the variables named in ``unset``)."""
        env = {k: v for k, v in self.env.items() if k not in unset}
        done = subprocess.run(
            self._argv(args), env=env, cwd=REPO, capture_output=True,
            timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )
        return Result(
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``nbdesk ARGS`` in the background (output to files under ``out``)."""
        self._started += 1
        n = self._started
        with open(self.out / f"{n}.stdout", "wb") as so, open(self.out / f"{n}.stderr", "wb") as se:
            proc = subprocess.Popen(
                self._argv(args), env=self.env, cwd=REPO, stdout=so, stderr=se,
                stdin=subprocess.DEVNULL,
            )
        proc.nbdesk_run = n  # type: ignore[attr-defined]
        self._procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> Result:
        """Wait for a background run; its exit code and output."""
        code = proc.wait(timeout=timeout)
        n = proc.nbdesk_run  # type: ignore[attr-defined]
        return Result(
            code,
            (self.out / f"{n}.stdout").read_text("utf-8", "replace"),
            (self.out / f"{n}.stderr").read_text("utf-8", "replace"),
        )

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no cleanup handler, no finally block runs in the child."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self.library.close()

    # ---------------------------------------------------------------- the library

    def jobs(self) -> list[Job]:
        return self.library.jobs()

    def in_state(self, *states: JobState) -> list[Job]:
        return [j for j in self.jobs() if j.state in states]

    def wait_for_jobs(
        self, predicate: Any, timeout: float, what: str,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> list[Job]:
        """Poll the database until ``predicate(jobs)`` holds (fails early if ``proc`` died)."""

        def check() -> tuple[list[Job]] | None:
            jobs = self.jobs()
            if predicate(jobs):
                return (jobs,)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(
                    f"nbdesk exited ({proc.returncode}) before {what}: "
                    + self.finish(proc).describe()
                )
            return None

        return wait_until(check, timeout, what)[0]

    def files_under_home(self) -> Iterator[Path]:
        return (p for p in self.home.rglob("*") if p.is_file())
