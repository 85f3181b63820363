"""Fixtures of the end-to-end tests: simulators and CLI installations, cleaned up after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nbdesk.sim import SimConfig, Simulator
from tests.e2e.harness import Cli


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """``make_sim(**SimConfig fields)``: a started simulator, stopped after the test."""
    started: list[Simulator] = []

    def make(**config: Any) -> Simulator:
        sim = Simulator(SimConfig(**config)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def make_cli(tmp_path: Path) -> Iterator[Callable[..., Cli]]:
    """``make_cli(sim, keys=..., settings=...)``: a private nbdesk installation."""
    made: list[Cli] = []

    def make(sim: Simulator | None = None, **kwargs: Any) -> Cli:
        cli = Cli(tmp_path / f"user{len(made)}", sim, **kwargs)
        made.append(cli)
        return cli

    yield make
    for cli in made:
        cli.close()
