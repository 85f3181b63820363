"""The prompt-history model on its own, without a widget: a QObject over a real file in a
temporary folder, on a plain asyncio loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from nbdesk.ui.models.history import HISTORY_MAX, HISTORY_NAME, PromptHistory

pytestmark = pytest.mark.anyio


class Runner:
    """``spawn`` for the model: runs its coroutines as tasks a test can wait for."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []
        self.what: list[str] = []

    def __call__(self, coro: Coroutine[Any, Any, Any], *, what: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        self.what.append(what)
        return task

    async def settle(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)


def saved(path: Path) -> list[str]:
    prompts: list[str] = json.loads(path.read_text(encoding="utf-8"))["prompts"]
    return prompts


async def test_prompts_are_saved_and_read_back_by_the_next_session(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_NAME
    run = Runner()
    model = PromptHistory(path, spawn=run)
    changes: list[list[str]] = []
    model.changed.connect(lambda: changes.append(model.prompts()))
    model.load()
    model.remember("first prompt")
    model.remember("  second prompt ")
    model.remember("first prompt")  # again: moves to the top, no duplicate
    model.remember("   ")  # blank: ignored
    await run.settle()
    assert model.prompts() == ["first prompt", "second prompt"]
    assert saved(path) == ["first prompt", "second prompt"]
    assert changes[-1] == ["first prompt", "second prompt"]

    run2 = Runner()
    again = PromptHistory(path, spawn=run2)
    assert again.prompts() == []  # nothing is read before load
    again.load()
    again.load()  # the second call reads nothing more
    assert run2.what == ["reading the prompt history"]
    await run2.settle()
    assert again.prompts() == ["first prompt", "second prompt"]


async def test_prompts_remembered_before_the_read_stay_on_top(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_NAME
    path.write_text(json.dumps({"version": 1, "prompts": ["old one", "shared"]}))
    run = Runner()
    model = PromptHistory(path, spawn=run)
    model.remember("shared")  # before any load: the save loads first, loses nothing
    model.remember("new one")
    await run.settle()
    assert model.prompts() == ["new one", "shared", "old one"]
    assert saved(path) == ["new one", "shared", "old one"]


async def test_at_most_history_max_prompts_are_kept_and_clear_empties_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / HISTORY_NAME
    run = Runner()
    model = PromptHistory(path, spawn=run)
    model.load()
    for i in range(HISTORY_MAX + 5):
        model.remember(f"prompt {i}")
    await run.settle()
    expected = [f"prompt {i}" for i in reversed(range(5, HISTORY_MAX + 5))]
    assert model.prompts() == expected and saved(path) == expected
    model.clear()
    await run.settle()
    assert model.prompts() == [] and saved(path) == []


@pytest.mark.parametrize("text", ["{not json", '["a list"]', '{"prompts": "no list"}'])
async def test_a_damaged_file_gives_an_empty_history(tmp_path: Path, text: str) -> None:
    path = tmp_path / HISTORY_NAME
    path.write_text(text)
    run = Runner()
    model = PromptHistory(path, spawn=run)
    model.load()
    await run.settle()
    assert model.prompts() == []
    model.remember("fresh")
    await run.settle()
    assert saved(path) == ["fresh"]
