"""The reliability suite's shared report: every trial adds its figures, and one summary
block is printed at the end of the run (trials, kills per state, jobs, faults, bad inputs,
duplicates, files lost, leaks, GUI stalls)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


@dataclass
class ReliabilityReport:
    trials: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # state (or failpoint) -> kills
    jobs: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # kind -> injected
    bad_inputs: int = 0
    duplicates: int = 0  # paid submissions beyond one per completed job
    files_lost: int = 0  # completed jobs without their image, or hash mismatches
    partial_files: int = 0  # temp or stray files left in the library
    leaks: int = 0  # places a key was found
    gui_max_stall_ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_faults(self, faults: dict[str, int]) -> None:
        with self.lock:
            self.faults.update({k: v for k, v in faults.items() if v})

    def lines(self) -> list[str]:
        kills = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items())) or "none"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        out = [
            f"trials run        {self.trials}",
            f"kills per state   {kills}",
            f"jobs              {self.jobs}",
            f"faults injected   {sum(self.faults.values())} ({faults})",
            f"bad inputs tried  {self.bad_inputs}",
            f"duplicates found  {self.duplicates}",
            f"files lost        {self.files_lost}",
            f"partial files     {self.partial_files}",
            f"leaks found       {self.leaks}",
            f"GUI max stall     {self.gui_max_stall_ms:.1f} ms",
        ]
        return out + [f"note: {n}" for n in self.notes]


_REPORT = ReliabilityReport()


@pytest.fixture(scope="session")
def report() -> Iterator[ReliabilityReport]:
    yield _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    r = _REPORT
    if not (r.trials or r.jobs or r.bad_inputs or r.leaks or r.notes):
        return
    terminalreporter.section("nbdesk reliability summary")
    for line in r.lines():
        terminalreporter.write_line(line)
