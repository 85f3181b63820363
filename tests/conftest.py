"""Shared test configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Window tests run offscreen by default (no display needed), on a desktop-sized screen:
# the offscreen platform's own 800x800 screen is smaller than the main window.
if os.environ.get("QT_QPA_PLATFORM", "offscreen") == "offscreen":
    os.environ["QT_QPA_PLATFORM"] = (
        f"offscreen:configfile={Path(__file__).with_name('offscreen.json')}"
    )

pytest_plugins = ["tests.keychain", "tests.helpers"]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, like the app (qasync)."""
    return "asyncio"
