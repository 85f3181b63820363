"""Shared test configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: "ci" (the default) is fixed-seed and quick, and writes no example database
# into the repository; NBDESK_HYPOTHESIS=long tries many more examples (still no database).
settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=5000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("NBDESK_HYPOTHESIS", "ci"))

# Window tests run offscreen by default (no display needed), on a desktop-sized screen:
# the offscreen platform's own 800x800 screen is smaller than the main window.
if os.environ.get("QT_QPA_PLATFORM", "offscreen") == "offscreen":
    os.environ["QT_QPA_PLATFORM"] = (
        f"offscreen:configfile={Path(__file__).with_name('offscreen.json')}"
    )

pytest_plugins = ["tests.keychain", "tests.helpers", "tests.hostile"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bundle", metavar="DIR", default=None,
        help="smoke-test the built app in DIR (packaging/build.py makes dist/nbdesk); "
             "without it the tests marked `bundle` are left out")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The bundle's smoke test needs a build (minutes): only with --bundle."""
    if config.getoption("--bundle"):
        return
    skipped = [i for i in items if i.get_closest_marker("bundle")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [i for i in items if not i.get_closest_marker("bundle")]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, like the app (qasync)."""
    return "asyncio"
