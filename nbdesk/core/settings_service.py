"""The one live ``Settings`` of a process, and who is told when it changes.

Everything that acts on a setting (the runtime, the connector, the engine, the window)
reads ``SettingsService.current`` at use, or subscribes to hear of a change; nobody keeps
a copy of its own. ``update`` validates, writes the file atomically, then makes the new
settings current and tells the subscribers: a bad value or a failed write changes
nothing. Writing is plain blocking file work: a caller on an event loop runs ``update``
or ``save`` in a worker thread (``asyncio.to_thread``); subscribers are then called on
that thread, and one that belongs to a loop hands the change over to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbdesk.core.settings import FIELD_NAMES, Settings, load_settings, save_settings

log = logging.getLogger(__name__)

#: ``subscriber(old, new)``, after ``new`` became current.
Subscriber = Callable[[Settings, Settings], None]


class SettingsService:
    """``path``: the settings file (None: kept in memory only, as in tests)."""

    def __init__(self, settings: Settings | None = None, path: Path | None = None) -> None:
        self._settings = Settings() if settings is None else settings
        self.path = path
        self._subscribers: list[Subscriber] = []
        # The current settings change under this lock, briefly; the file is written under
        # another, one write at a time: a change made on the GUI thread never waits for
        # a write's fsync on a worker thread.
        self._lock = threading.RLock()
        self._writing = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> SettingsService:
        """The settings in ``path`` (the defaults for whatever is missing or unusable)."""
        return cls(load_settings(path), path)

    @property
    def current(self) -> Settings:
        return self._settings

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(old, new)`` after every change; returns the unsubscribe."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def check(self, **changes: Any) -> Settings:
        """The current settings with ``changes``, validated; ``ValueError`` with a message
        that names the setting (an unknown name included)."""
        unknown = sorted(set(changes) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(f"unknown setting {', '.join(unknown)}")
        return self._settings.replace(**changes)

    def update(self, *, save: bool = True, force: bool = False, **changes: Any) -> Settings:
        """Validate ``changes``, write the file (unless ``save`` is False: the caller saves
        later with ``save()``), make them current and notify; returns the new settings.

        ``ValueError`` for a bad value, ``OSError`` when the file cannot be written: either
        way nothing changed. ``force``: overwrite a file written by a newer nbdesk (the
        user saved the settings explicitly)."""
        if not save or self.path is None:
            with self._lock:
                old = self._settings
                new = self._settings = self.check(**changes)
        else:
            with self._writing:
                with self._lock:
                    written = self.check(**changes)
                    unchanged = written == self._settings
                if not unchanged or force:
                    save_settings(self.path, written, force=force)
                with self._lock:
                    # On whatever is current now (a change made meanwhile is kept; its
                    # maker saves it after this write).
                    old = self._settings
                    new = self._settings = old.replace(**changes)
        if new != old:
            self._notify(old, new)
        return new

    def save(self, *, force: bool = False) -> bool:
        """Write the current settings atomically (blocking); whether the file was written
        (see ``save_settings``: a newer nbdesk's file is kept unless ``force``)."""
        if self.path is None:
            return False
        with self._writing:
            with self._lock:
                snapshot = self._settings
            return save_settings(self.path, snapshot, force=force)

    def _notify(self, old: Settings, new: Settings) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(old, new)
            except Exception:
                log.exception("a settings subscriber failed")
