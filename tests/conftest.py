"""Shared test configuration."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.keychain", "tests.helpers"]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, like the app (qasync)."""
    return "asyncio"
