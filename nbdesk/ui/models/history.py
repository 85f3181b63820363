"""The prompt history: the user's last prompts, newest first, kept in a file in the library
folder. The composer shows and recalls them; this model owns the list and the file.

The file is read and written off the GUI thread (``asyncio.to_thread``), one write at a
time, each the whole list as it is then. Prompts remembered before the file was read stay
on top, and no save runs before the read: no prompt is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from nbdesk.core.settings import write_atomic

log = logging.getLogger(__name__)

HISTORY_NAME = "prompt_history.json"
HISTORY_MAX = 50

#: Runs a coroutine from a slot (``Controller.spawn``): ``spawn(coro, what=...)``.
Spawn = Callable[..., Any]


class PromptHistory(QObject):
    changed = Signal()  # the list changed (read from the file, a prompt added, cleared)

    def __init__(self, path: Path, *, spawn: Spawn, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = path
        self._spawn = spawn
        self._prompts: list[str] = []
        self._started = False
        self._loaded = asyncio.Event()  # saves wait for it
        self._lock = asyncio.Lock()

    def prompts(self) -> list[str]:
        """Earlier prompts, newest first."""
        return list(self._prompts)

    def load(self) -> None:
        """Read the file (off the GUI thread); the first call reads, later ones do
        nothing."""
        if not self._started:
            self._started = True
            self._spawn(self._load(), what="reading the prompt history")

    def remember(self, prompt: str) -> None:
        """Put ``prompt`` at the top (once) and save the list."""
        prompt = prompt.strip()
        if not prompt:
            return
        self._prompts = [prompt, *(p for p in self._prompts if p != prompt)][:HISTORY_MAX]
        self.changed.emit()
        self._spawn(self._save(), what="saving the prompt history")

    def clear(self) -> None:
        self._prompts = []
        self.changed.emit()
        self._spawn(self._save(), what="saving the prompt history")

    async def _load(self) -> None:
        try:
            loaded = await asyncio.to_thread(_read, self.path)
            merged = [*self._prompts, *(p for p in loaded if p not in self._prompts)]
            self._prompts = merged[:HISTORY_MAX]
            self.changed.emit()
        finally:
            self._loaded.set()

    async def _save(self) -> None:
        self.load()  # a save before any load would overwrite the file's prompts
        await self._loaded.wait()
        async with self._lock:
            data = {"version": 1, "prompts": list(self._prompts)}
            text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
            await asyncio.to_thread(write_atomic, self.path, text.encode("utf-8"))


def _read(path: Path) -> list[str]:
    """Worker thread: the saved prompts; a missing or damaged file gives none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning("cannot read the prompt history %s (%s); starting a new one", path, e)
        return []
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, list):
        return []
    return [p for p in prompts if isinstance(p, str) and p.strip()][:HISTORY_MAX]
