"""Lint, types and the layering contract run as part of `uv run pytest`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed in the project environment (uv sync)")
    return found


def test_ruff() -> None:
    result = run(tool("ruff"), "check", "nbdesk", "tests", "main.py", "packaging")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_api_core_and_sim() -> None:
    result = run(tool("mypy"), "nbdesk")
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_and_core_import_no_qt() -> None:
    result = run(tool("lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_window_imports_no_network_keychain_or_simulator_before_it_paints() -> None:
    """httpx (with its SSL set-up), keyring, Pillow and the simulator load after the paint
    (the client on a worker thread, keyring in the keychain's threads, the simulator in
    Demo mode only): importing the window's modules must not pull them in."""
    code = ("import sys, nbdesk.app, nbdesk.ui.main_window, nbdesk.ui.controller, "
            "nbdesk.core.runtime, nbdesk.demo; print(' '.join(sorted(m for m in "
            "('httpx', 'keyring', 'nbdesk.sim', 'click', 'rich', 'PIL') if m in sys.modules)))")
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def modules_loaded_by(*imports: str) -> set[str]:
    code = f"import sys, {', '.join(imports)}; print(' '.join(sorted(sys.modules)))"
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_window_frame_paints_before_the_panels_engine_and_asyncio_load() -> None:
    """The app shows in steps (nbdesk.app.main): what the frame needs must not pull in
    the grid, the other panels, the engine, asyncio or the command line."""
    loaded = modules_loaded_by("nbdesk.launcher", "nbdesk.app", "nbdesk.ui.main_window",
                               "nbdesk.core.paths", "nbdesk.ui.launch")
    early = {"asyncio", "nbdesk.cli", "nbdesk.core.engine", "nbdesk.core.library",
             "nbdesk.ui.library_view", "nbdesk.ui.composer", "nbdesk.ui.controller",
             "nbdesk.ui.viewer", "subprocess"}
    assert loaded & early == set()


def test_the_library_grid_draws_before_the_engine_and_asyncio_load() -> None:
    loaded = modules_loaded_by("nbdesk.core.runtime", "nbdesk.ui.library_view",
                               "nbdesk.ui.message_bar", "nbdesk.ui.crash")
    assert loaded & {"asyncio", "nbdesk.core.engine", "nbdesk.api.http",
                     "nbdesk.ui.controller", "nbdesk.ui.composer"} == set()
