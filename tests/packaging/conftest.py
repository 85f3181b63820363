"""The bundle smoke test's figures (size, start-up, first image), printed as one block at
the end of the run."""

from __future__ import annotations

import pytest

#: (label, value) lines, in the order the tests add them
SUMMARY: list[tuple[str, str]] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARY:
        return
    terminalreporter.section("nbdesk bundle summary")
    width = max(len(label) for label, _ in SUMMARY)
    for label, value in SUMMARY:
        terminalreporter.write_line(f"{label:<{width}}  {value}")
